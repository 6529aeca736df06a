"""Models by name: ``build_model("neurostorm-base")``, ``build_model("neurostorm-mae-tiny", mask_ratio=0.8)``.

``neurostorm-base`` is the released NeuroSTORM configuration (input 96³ × 20 frames, 5,173,020 parameters);
``neurostorm-tiny`` runs the same code on the 4 mm grid (48³ voxels, token grid 8³) with narrow stages. The
``-mae-`` names build the STORM pretraining model around the same encoders.

Baselines: ``swift-base`` / ``swift-tiny`` read the same clips; ``brainnetcnn``, ``bnt``, ``braingnn`` (and
their ``-tiny`` variants) read connectivity matrices (``n_rois`` set from the atlas); ``fc-linear`` is a
scikit-learn model on the upper triangle of FC. ``model_input(name)`` says which input a model takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace

from torch import nn

from neurostorm.models.baselines.bnt import BNT, BNTConfig
from neurostorm.models.baselines.braingnn import BrainGNN, BrainGNNConfig
from neurostorm.models.baselines.brainnetcnn import BrainNetCNN, BrainNetCNNConfig
from neurostorm.models.baselines.fc_linear import FCLinear
from neurostorm.models.baselines.swift import SwiFT, SwiFTConfig
from neurostorm.models.encoder import NeuroSTORM, NeuroSTORMConfig, count_parameters
from neurostorm.models.heads import ClassificationHead, EmbeddingHead, RegressionHead
from neurostorm.models.storm import STORM, STORMConfig

ENCODER_PRESETS: dict[str, NeuroSTORMConfig] = {
    "base": NeuroSTORMConfig(),
    "tiny": NeuroSTORMConfig(img_size=(48, 48, 48), embed_dim=16, depths=(2, 2, 2, 2)),
}

MODELS: dict[str, Callable[..., nn.Module]] = {}
INPUTS: dict[str, str] = {}  # "clips" (B, 1, X, Y, Z, T) or "fc" (B, R, R)


def register_model(name: str, input: str = "clips") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a factory ``f(**overrides) -> nn.Module`` to the registry under ``name``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is already registered")
        MODELS[name], INPUTS[name] = factory, input
        return factory

    return add


def model_input(name: str) -> str:
    """``"clips"`` or ``"fc"``: what the named model reads."""
    if name not in INPUTS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return INPUTS[name]


def _encoder(preset: str) -> Callable[..., NeuroSTORM]:
    return lambda **overrides: NeuroSTORM(replace(ENCODER_PRESETS[preset], **overrides))


def _storm(preset: str) -> Callable[..., STORM]:
    """STORM around a preset encoder (STRD on); an override goes to STORM or to the encoder by its name."""
    return lambda **overrides: STORM(STORMConfig.from_dict({"encoder": asdict(ENCODER_PRESETS[preset]),
                                                            "strd": True, **overrides}))


for _preset in ENCODER_PRESETS:
    register_model(f"neurostorm-{_preset}")(_encoder(_preset))
    register_model(f"neurostorm-mae-{_preset}")(_storm(_preset))

for _preset, _heads in (("base", (3, 6, 12, 24)), ("tiny", (2, 4, 8, 16))):
    register_model(f"swift-{_preset}")(
        lambda p=_preset, h=_heads, **overrides: SwiFT(SwiFTConfig(**{**asdict(ENCODER_PRESETS[p]), "heads": h,
                                                                    **overrides})))

CONNECTOME_PRESETS = {  # name: (model, config, tiny settings); the defaults are the reference comparisons' sizes
    "brainnetcnn": (BrainNetCNN, BrainNetCNNConfig, {"e2e_channels": (8, 8), "e2n_channels": 16, "n2g_channels": 32,
                                                     "hidden": 32}),
    "bnt": (BNT, BNTConfig, {"pos_dim": 8, "feedforward": 64, "dec_hidden": 8, "hidden": 32, "out": 16}),
    "braingnn": (BrainGNN, BrainGNNConfig, {"dims": (16, 16), "communities": 4, "classifier": (32, 64)}),
}


def _connectome(cls, config_cls, tiny: dict) -> Callable[..., nn.Module]:
    return lambda **overrides: cls(config_cls(**{**tiny, **overrides}))


for _name, (_cls, _config_cls, _tiny) in CONNECTOME_PRESETS.items():
    register_model(_name, input="fc")(_connectome(_cls, _config_cls, {}))
    register_model(f"{_name}-tiny", input="fc")(_connectome(_cls, _config_cls, _tiny))
register_model("fc-linear", input="fc")(FCLinear)


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` replace fields of its configuration dataclass."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**overrides)
    except TypeError as err:  # dataclasses.replace names the unknown field
        raise ValueError(f"{name}: {err}") from err


from neurostorm.models.weights import (  # noqa: E402  (weights reads the model classes above)
    from_pretrained,
    load_encoder,
    load_official_checkpoint,
    load_pretrained,
    save_pretrained,
)

__all__ = ["BNT", "MODELS", "STORM", "BrainGNN", "BrainNetCNN", "ClassificationHead", "EmbeddingHead", "FCLinear",
           "NeuroSTORM", "NeuroSTORMConfig", "RegressionHead", "STORMConfig", "SwiFT", "build_model",
           "count_parameters", "from_pretrained", "load_encoder", "load_official_checkpoint", "load_pretrained",
           "model_input", "register_model", "save_pretrained"]
