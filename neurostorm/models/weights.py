"""Weights on disk: our safetensors folders, and the reference implementation's Lightning checkpoints.

A pretrained folder holds ``config.json`` (architecture, its configuration, the preprocessing the weights
expect) and ``model.safetensors``. Safetensors files hold tensors only, so loading one never runs code.
Official ``.ckpt`` files are pickles: they are read with ``torch.load(weights_only=True)``, which refuses
any object but tensors, containers and a few allow-listed hyper-parameter classes.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from neurostorm.data.files import replaced_atomically
from neurostorm.errors import InputError
from neurostorm.models.baselines.bnt import BNT, BNTConfig
from neurostorm.models.baselines.braingnn import BrainGNN, BrainGNNConfig
from neurostorm.models.baselines.brainnetcnn import BrainNetCNN, BrainNetCNNConfig
from neurostorm.models.baselines.swift import SwiFT, SwiFTConfig
from neurostorm.models.encoder import NeuroSTORM, NeuroSTORMConfig
from neurostorm.models.hub import download_folder, is_hub_id, model_card, push_folder
from neurostorm.models.reference import check_against, check_model_name, encoder_settings, is_pretraining_checkpoint
from neurostorm.models.storm import STORM, STORMConfig
from neurostorm.version import __version__

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
ARCHITECTURES = {"NeuroSTORM": (NeuroSTORM, NeuroSTORMConfig.from_dict), "STORM": (STORM, STORMConfig.from_dict),
                 "SwiFT": (SwiFT, SwiFTConfig.from_dict), "BrainNetCNN": (BrainNetCNN, BrainNetCNNConfig.from_dict),
                 "BNT": (BNT, lambda d: BNTConfig(**d)), "BrainGNN": (BrainGNN, BrainGNNConfig.from_dict)}


# hyper-parameters of the reference's checkpoints come as Lightning's AttributeDict (a dict subclass): read it
# back as an OrderedDict, the one dict type the weights-only unpickler fills, so Lightning 1.x is not needed
_CHECKPOINT_GLOBALS = [argparse.Namespace] + [
    (OrderedDict, f"{module}.AttributeDict")
    for module in ("pytorch_lightning.utilities.parsing", "lightning.pytorch.utilities.parsing",
                   "lightning.fabric.utilities.data", "lightning_fabric.utilities.data")
]


def save_pretrained(model: nn.Module, folder: str | Path, preprocessing: dict | None = None,
                    training: dict | None = None, push_to_hub: bool = False, repo_id: str | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` into ``folder`` (each file
    replaced atomically). ``preprocessing``: the grid and parameters the weights expect (a store's
    :meth:`~neurostorm.data.store.Store.preprocessing`); ``training``: a summary of the training data.
    ``push_to_hub=True`` then uploads the folder to the Hub repository ``repo_id``."""
    if push_to_hub and not repo_id:
        raise ValueError("push_to_hub needs repo_id='org/name'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architecture": type(model).__name__, "config": model.config.to_dict(),
              "preprocessing": preprocessing or {}, "training": training or {}, "neurostorm_version": __version__}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with replaced_atomically(folder / WEIGHTS_FILE) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    with replaced_atomically(folder / CONFIG_FILE) as temporary:
        temporary.write_text(json.dumps(config, indent=2))
    with replaced_atomically(folder / CARD_FILE) as temporary:
        temporary.write_text(model_card(config))
    if push_to_hub:
        push_folder(folder, repo_id)
    return folder


CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")  # reference Lightning / PyTorch checkpoints


def from_pretrained(name_or_path: str | Path, **overrides) -> nn.Module:
    """A model by name: a pretrained folder (``config.json`` + ``model.safetensors``), a Hub id
    ``org/repo[@revision]`` (through the Hub cache; works offline once cached), or a reference NeuroSTORM
    Lightning ``.ckpt`` whose ``hyper_parameters`` define the model (an MAE checkpoint gives the STORM
    pretraining model; ``.encoder`` is its encoder). ``overrides`` change settings that keep the function,
    e.g. ``backend`` or ``checkpoint_blocks``; one that contradicts a checkpoint's settings is refused."""
    path = Path(name_or_path)
    if path.is_file() or (not path.is_dir() and path.suffix in CHECKPOINT_SUFFIXES):
        return _from_reference_checkpoint(path, **overrides)
    return load_pretrained(pretrained_folder(name_or_path), **overrides)


def pretrained_folder(name_or_path: str | Path) -> Path:
    """The local folder of a pretrained folder path or Hub id."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if is_hub_id(str(name_or_path)):
        return download_folder(str(name_or_path))
    raise InputError(path, "no such pretrained folder or checkpoint, and not a Hub id (org/repo[@revision])")


def expected_preprocessing(name_or_path: str | Path) -> dict:
    """The preprocessing settings a pretrained folder or Hub id records, as ``PreprocessConfig`` fields:
    ``grid``, ``tr``, ``normalization``, ``storage``, ``fill_floor`` (those it holds; {} for weights saved outside
    a run)."""
    recorded = read_pretrained_config(pretrained_folder(name_or_path)).get("preprocessing") or {}
    followed = ("tr", "grid", "normalization", "storage", "fill_floor")
    settings = {k: v for k, v in recorded.get("params", {}).items() if k in followed}
    if settings:
        settings.setdefault("fill_floor", None)  # recorded only when set
    if isinstance(recorded.get("grid"), dict):
        settings["grid"] = recorded["grid"]["name"]
    return settings


def _from_reference_checkpoint(path: Path, **overrides) -> nn.Module:
    checkpoint = load_checkpoint(path)
    hparams = hyper_parameters(checkpoint)
    if not hparams:
        raise InputError(path, "no hyper_parameters in the checkpoint to build its model from: build the model "
                               "and call load_official_checkpoint(path, model)")
    check_model_name(hparams, path)
    try:
        config = NeuroSTORMConfig(**{**encoder_settings(hparams, path), **overrides})
    except (TypeError, ValueError) as err:
        raise InputError(path, f"cannot build the checkpoint's model: {err}") from None
    if is_pretraining_checkpoint(hparams):
        mask = "window" if hparams.get("spatial_mask") == "window" else \
            "tube" if hparams.get("time_mask") == "tube" else "random"
        model: nn.Module = STORM(STORMConfig(encoder=config, mask_mode=mask,
                                             mask_ratio=float(hparams.get("mask_ratio", 0.5))))
    else:
        model = NeuroSTORM(config)
    _load_reference_state(checkpoint, path, model)
    return model


def read_pretrained_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, f"not a readable model config ({err})") from err
    if config.get("architecture") not in ARCHITECTURES:
        raise InputError(path, f"unknown architecture {config.get('architecture')!r}")
    return config


def load_pretrained(folder: str | Path, **overrides) -> nn.Module:
    """Build the model a pretrained folder describes and load its weights (``overrides`` change settings
    that do not touch weights, e.g. ``checkpoint_blocks`` or ``backend`` of an encoder)."""
    config = read_pretrained_config(folder)
    cls, make_config = ARCHITECTURES[config["architecture"]]
    model = cls(make_config({**config["config"], **overrides}))
    _load_exact(model, _read_safetensors(Path(folder) / WEIGHTS_FILE), Path(folder) / WEIGHTS_FILE)
    return model


def load_encoder(folder: str | Path, **overrides) -> NeuroSTORM:
    """The encoder of a pretrained folder, whether it holds an encoder or a whole STORM model, to adapt or to
    embed with: spatiotemporal redundancy dropout, a regulariser of pretraining only, is off unless
    ``overrides`` turn it on (it would zero tokens of every training clip of a fine-tuning)."""
    saved = read_pretrained_config(folder)["config"]
    if "strd" in saved.get("encoder", saved):
        overrides = {"strd": False, **overrides}
    model = load_pretrained(folder, **overrides)
    return model.encoder if isinstance(model, STORM) else model


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise InputError(path, f"not a readable safetensors file ({err})") from err


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise InputError(path, f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                               f"wrong shape {wrong[:5]}")
    model.load_state_dict(state)


def load_checkpoint(path: str | Path, mmap: bool = False) -> object:
    """A ``.ckpt``/``.pt`` file read with ``weights_only=True``: tensors, containers and plain values only,
    so loading can never run code. Anything else is refused with the name of what it would have built.
    ``mmap=True`` maps the tensors' storage instead of reading it (for a look at plain values)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise InputError(path, f"refused: the checkpoint holds a Python object other than weights{what}, and "
                               "loading it could run code") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise InputError(path, f"not a readable PyTorch checkpoint ({err})") from err


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``.ckpt``/``.pt`` file, read without executing any code from it."""
    return _state_dict(load_checkpoint(path), path)


def _state_dict(checkpoint: object, path: str | Path) -> dict[str, torch.Tensor]:
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "no state dict of tensors in the checkpoint")
    return state


def hyper_parameters(checkpoint: object) -> dict:
    """The reference's argparse settings saved in a Lightning checkpoint ({} when it has none)."""
    found = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if isinstance(found, argparse.Namespace):
        return vars(found)
    return dict(found) if isinstance(found, dict) else {}


@dataclass
class LoadReport:
    """What loading a foreign checkpoint did: parameters loaded, left at their initial value, ignored."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"loaded {len(self.loaded)} tensors; missing {len(self.missing)}: {self.missing[:8]}; "
                f"unexpected {len(self.unexpected)}: {self.unexpected[:8]}")


_DECODER_PREFIXES = ("first_patch_expanding.", "layers_up.", "norm_up.", "decoder_pred.")
# the reference's connectome baselines, module by module (its task layer, BrainNetCNN's fc.6, BNT's fc.6 and
# BrainGNN's fc3, is our task head, so it is reported as unexpected); "{0}" is the reference's 1-based block
# number minus one, "{1}"… its groups as written
_BASELINE_NAMES: dict[type, list[tuple[str, str]]] = {
    BrainNetCNN: [(r"^e2e_layers\.(\d+)\.(row|col)_conv\.weight$", "e2e.{1}.{2}.weight"),
                  (r"^e2e_layers\.(\d+)\.bias$", "e2e.{1}.row.bias"),  # one bias per layer: the row filter's
                  (r"^(e2n|n2g)\.conv\.(weight|bias)$", "{1}.{2}"), (r"^fc\.([14]\..+)$", "dense.{1}")],
    BNT: [(r"^node_identity$", "identity"),
          (r"^attention_list\.(\d+)\.transformer\.(.+)$", "transformers.{1}.{2}"),
          (r"^attention_list\.(\d+)\.(?:dec\.)?encoder\.(.+)$", "readouts.{1}.encoder.{2}"),
          (r"^attention_list\.(\d+)\.dec\.assignment\.cluster_centers$", "readouts.{1}.centres"),
          (r"^dim_reduction\.(.+)$", "reduce.{1}"), (r"^fc\.([03]\..+)$", "mlp.{1}")],
    BrainGNN: [(r"^(?:nn|conv)(\d)(?:\.nn)?\.0\.weight$", "convs.{0}.theta1.weight"),
               (r"^(?:nn|conv)(\d)(?:\.nn)?\.2\.(weight|bias)$", "convs.{0}.theta2.{2}"),
               (r"^conv(\d)\.bias$", "convs.{0}.bias"),
               (r"^pool(\d)\.(?:select\.)?weight$", "pools.{0}.weight"),  # (1, d) in torch-geometric
               (r"^fc1\.(.+)$", "classifier.0.{1}"), (r"^bn1\.(.+)$", "classifier.2.{1}"),
               (r"^fc2\.(.+)$", "classifier.4.{1}"), (r"^bn2\.(.+)$", "classifier.6.{1}")],
}


def _deliberately_absent(model: nn.Module, name: str) -> bool:
    """Parameters a reference checkpoint does not hold by design; loading sets them to 0 (the reference's
    function) or, for prompts, leaves them to be trained: BNT's transformer biases (the reference's layers
    have none), BrainNetCNN's column-filter biases (its E2E layers have one bias, loaded as the row filter's),
    an encoder's prompt tokens (added for prompt tuning after a checkpoint without them)."""
    if isinstance(model, BNT):
        return name.startswith("transformers.") and name.endswith("bias")
    if isinstance(model, BrainNetCNN):
        return name.startswith("e2e.") and name.endswith(".col.bias")
    return _is_prompt(name)


def _is_prompt(name: str) -> bool:
    return name.endswith(".prompt") or name == "prompt"


def _baseline_name(key: str, value: torch.Tensor, model: nn.Module) -> tuple[str, torch.Tensor]:
    for pattern, template in _BASELINE_NAMES[type(model)]:
        if match := re.match(pattern, key):
            groups = match.groups()
            block = int(groups[0]) - 1 if groups and groups[0].isdigit() else None
            name = template.format(block, *groups)
            return name, value.reshape(-1) if name.startswith("pools.") else value
    return key, value


def official_to_ours(key: str, value: torch.Tensor, target: nn.Module) -> tuple[str, torch.Tensor]:
    """Map one key/tensor of a reference checkpoint (prefix ``model.``) to our name and layout."""
    key = key.removeprefix("model.")
    if type(target) in _BASELINE_NAMES:
        return _baseline_name(key, value, target)
    if key.endswith(".pos_embed") and value.ndim == 6:  # (1, C, D, H, W, 1) → (D, H, W, C)
        value = value[0, ..., 0].permute(1, 2, 3, 0)
    elif key.endswith(".time_embed") and value.ndim == 6:  # (1, C, 1, 1, 1, T) → (T, C)
        value = value[0, :, 0, 0, 0, :].T
    elif key.endswith(".prompt") and value.ndim == 3:  # (1, P, C) → (P, C)
        value = value[0]
    if isinstance(target, STORM):
        if key.startswith(_DECODER_PREFIXES):
            key = "decoder." + key
        elif not key.startswith("window_mask_token"):
            key = "encoder." + key
    return key, value.contiguous()


def load_official_checkpoint(path: str | Path, model: nn.Module) -> LoadReport:
    """Load a reference Lightning checkpoint into ``model`` by name; report what did not match. ``model`` is a
    NeuroSTORM encoder or STORM model, or the BrainNetCNN, BNT or BrainGNN baseline (their reference module
    names mapped).

    All or nothing: a checkpoint that lacks any of the model's parameters (other than those a reference
    checkpoint lacks by design: BNT's transformer biases and BrainNetCNN's column-filter biases, set to 0,
    which computes the reference's function; prompt tokens, left to be trained) is refused, as is one with a
    tensor of another shape (other model sizes or another ROI count) or with two names for one parameter
    holding different values. Nothing is loaded then. Tensors whose mapped name the model lacks are reported
    as unexpected (the reference's task layer, which is our task head; unused mask tokens). For the encoders,
    the checkpoint's hyper-parameters are read too: a window size, image or patch size that differs from the
    model's config is an error naming each (``neurostorm.from_pretrained`` builds the model the checkpoint
    describes instead).
    """
    return _load_reference_state(load_checkpoint(path), path, model)


def _load_reference_state(checkpoint: object, path: str | Path, model: nn.Module) -> LoadReport:
    if isinstance(model, (NeuroSTORM, STORM)):
        check_against(hyper_parameters(checkpoint), model.encoder.config if isinstance(model, STORM) else model.config,
                      path)
    own = model.state_dict()
    report, updates, source = LoadReport(), {}, {}
    for key, value in _state_dict(checkpoint, path).items():
        name, tensor = official_to_ours(key, value, model)
        if name not in own:
            report.unexpected.append(key)
        elif own[name].shape != tensor.shape:
            raise InputError(path, f"{key}: shape {tuple(tensor.shape)} does not fit {name} {tuple(own[name].shape)}; "
                                   "the checkpoint was built with other model sizes")
        elif name in updates and not torch.equal(updates[name], tensor):
            raise InputError(path, f"{source[name]} and {key} are both {name} of {type(model).__name__} but differ; "
                                   "nothing was loaded")
        else:
            updates[name], source[name] = tensor, key
    report.loaded = sorted(updates)
    report.missing = sorted(own.keys() - updates.keys())
    if needed := [name for name in report.missing if not _deliberately_absent(model, name)]:
        found = f"{len(report.loaded)} of its {len(own)} tensors found"
        names = ", ".join(report.unexpected[:3]) or "none"
        raise InputError(path, f"not a checkpoint of this {type(model).__name__}: {found}, {len(needed)} missing "
                               f"(e.g. {', '.join(needed[:3])}); the checkpoint's unmatched names: {names}; "
                               "nothing was loaded")
    zeroed = {name: torch.zeros_like(own[name]) for name in report.missing if not _is_prompt(name)}
    model.load_state_dict({**own, **zeroed, **updates})
    return report
