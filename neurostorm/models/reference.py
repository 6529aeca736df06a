"""The reference implementation's hyper-parameters, read into our configuration.

A reference Lightning checkpoint stores its argparse namespace under ``hyper_parameters``. Several of
those settings change what the network computes without changing any weight's shape (the window sizes,
above all: the reference's argparse default first-stage window is 2×2×2×2, its published configurations
use 4×4×4×4), so weights loaded by name alone could silently compute another function. This module maps
the reference's names onto :class:`NeuroSTORMConfig` fields and names every disagreement.

======================  ===========================================================
reference               ours
======================  ===========================================================
``img_size`` (X,Y,Z,T)  ``img_size`` (X, Y, Z) and ``frames`` (T)
``patch_size`` (p,p,p,1)``patch_size`` (p, p, p); the time patch must be 1
``in_chans``            ``in_chans``
``embed_dim``           ``embed_dim``
``depths``              ``depths``
``window_size``         ``window``
``first_window_size``   ``first_window`` (first stage only)
``last_layer_full_MSA`` ``full_last_stage``
``c_multiplier``        must be 2 (our stages double their width)
``use_prompt_tuning``,  ``prompt_tokens`` (``prompt_len`` when prompt tuning is on, else 0)
``prompt_len``
``use_strd``            ``strd``
``use_mae``,            a STORM pretraining model with that ``mask_ratio``
``mask_ratio``
``model``               ``neurostorm`` or ``swin4d_mae`` (released MAE checkpoints)
======================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from neurostorm.errors import InputError
from neurostorm.models.encoder import NeuroSTORMConfig

REFERENCE_MODELS = ("neurostorm", "swin4d_mae")
# fields that change the function the weights compute: a checkpoint and a model must agree on each
FUNCTION_FIELDS = {"img_size": "img_size", "frames": "img_size", "patch_size": "patch_size", "in_chans": "in_chans",
                   "embed_dim": "embed_dim", "depths": "depths", "window": "window_size",
                   "first_window": "first_window_size", "full_last_stage": "last_layer_full_MSA"}


def _flag(value: object) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "y") if isinstance(value, str) else bool(value)


def encoder_settings(hparams: Mapping, path: str | Path) -> dict:
    """Our encoder fields for the reference's hyper-parameters present in ``hparams`` (absent ones are
    left out). A setting our encoder cannot express is an :class:`InputError` naming it."""
    settings: dict = {}
    if "img_size" in hparams:
        size = [int(v) for v in hparams["img_size"]]
        settings["img_size"] = tuple(size[:3])
        if len(size) > 3:
            settings["frames"] = size[3]
    if "patch_size" in hparams:
        patch = [int(v) for v in hparams["patch_size"]]
        if len(patch) > 3 and patch[3] != 1:
            raise InputError(path, f"patch_size {patch}: a time patch of {patch[3]} frames; our encoder embeds "
                                   "one frame per token")
        settings["patch_size"] = tuple(patch[:3])
    for ours, theirs in (("in_chans", "in_chans"), ("embed_dim", "embed_dim")):
        if theirs in hparams:
            settings[ours] = int(hparams[theirs])
    for ours, theirs in (("depths", "depths"), ("window", "window_size"), ("first_window", "first_window_size")):
        if theirs in hparams:
            settings[ours] = tuple(int(v) for v in hparams[theirs])
    if "last_layer_full_MSA" in hparams:
        settings["full_last_stage"] = _flag(hparams["last_layer_full_MSA"])
    if int(hparams.get("c_multiplier", 2)) != 2:
        raise InputError(path, f"c_multiplier {hparams['c_multiplier']}: our stages double their width (2)")
    if "prompt_len" in hparams:
        settings["prompt_tokens"] = int(hparams["prompt_len"]) if _flag(hparams.get("use_prompt_tuning", True)) else 0
    if "use_strd" in hparams:
        settings["strd"] = _flag(hparams["use_strd"])
    return settings


def is_pretraining_checkpoint(hparams: Mapping) -> bool:
    """Whether the checkpoint holds a masked-autoencoder pretraining model (encoder and decoder)."""
    return _flag(hparams.get("use_mae", False)) or hparams.get("model") == "swin4d_mae"


def check_model_name(hparams: Mapping, path: str | Path) -> None:
    model = hparams.get("model")
    if model is not None and model not in REFERENCE_MODELS:
        raise InputError(path, f"a checkpoint of the reference's model {model!r}, not NeuroSTORM "
                               f"(expected one of {', '.join(REFERENCE_MODELS)})")


def mismatches(hparams: Mapping, config: NeuroSTORMConfig, path: str | Path) -> list[str]:
    """``"first_window_size [2, 2, 2, 2] ≠ first_window (4, 4, 4, 4)"`` for every function-changing setting
    on which the checkpoint and ``config`` disagree."""
    found = []
    for ours, value in encoder_settings(hparams, path).items():
        if ours in FUNCTION_FIELDS and getattr(config, ours) != value:
            theirs = FUNCTION_FIELDS[ours]
            shown = list(hparams[theirs]) if theirs in ("img_size", "patch_size", "depths", "window_size",
                                                         "first_window_size") else hparams[theirs]
            found.append(f"{theirs} {shown} ≠ {ours} {getattr(config, ours)}")
    return found


def check_against(hparams: Mapping, config: NeuroSTORMConfig, path: str | Path) -> None:
    """Refuse a checkpoint whose hyper-parameters say it computes another function than ``config``."""
    if found := mismatches(hparams, config, path):
        raise InputError(path, "the checkpoint was trained with other settings than the model: "
                               + "; ".join(found) + " (load it with neurostorm.from_pretrained, which reads them)")
