"""Models by name: ``build_model("neurostorm-base")``, ``build_model("neurostorm-mae-tiny", mask_ratio=0.8)``.

``neurostorm-base`` is the released NeuroSTORM configuration (input 96³ × 20 frames, 5,173,020 parameters);
``neurostorm-tiny`` runs the same code on the 4 mm grid (48³ voxels, token grid 8³) with narrow stages. The
``-mae-`` names build the STORM pretraining model around the same encoders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace

from torch import nn

from neurostorm.models.encoder import NeuroSTORM, NeuroSTORMConfig, count_parameters
from neurostorm.models.heads import ClassificationHead, EmbeddingHead, RegressionHead
from neurostorm.models.storm import STORM, STORMConfig

ENCODER_PRESETS: dict[str, NeuroSTORMConfig] = {
    "base": NeuroSTORMConfig(),
    "tiny": NeuroSTORMConfig(img_size=(48, 48, 48), embed_dim=16, depths=(2, 2, 2, 2)),
}

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a factory ``f(**overrides) -> nn.Module`` to the registry under ``name``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return add


def _encoder(preset: str) -> Callable[..., NeuroSTORM]:
    return lambda **overrides: NeuroSTORM(replace(ENCODER_PRESETS[preset], **overrides))


def _storm(preset: str) -> Callable[..., STORM]:
    storm_fields = {f.name for f in fields(STORMConfig)} - {"encoder"}

    def build(**overrides) -> STORM:
        storm = {k: overrides.pop(k) for k in list(overrides) if k in storm_fields}
        encoder = replace(ENCODER_PRESETS[preset], **{"strd": True, **overrides})
        return STORM(STORMConfig(encoder=encoder, **storm))

    return build


for _preset in ENCODER_PRESETS:
    register_model(f"neurostorm-{_preset}")(_encoder(_preset))
    register_model(f"neurostorm-mae-{_preset}")(_storm(_preset))


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` replace fields of its configuration dataclass."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**overrides)
    except TypeError as err:  # dataclasses.replace names the unknown field
        raise ValueError(f"{name}: {err}") from err


__all__ = ["MODELS", "ClassificationHead", "EmbeddingHead", "NeuroSTORM", "NeuroSTORMConfig", "RegressionHead",
           "STORM", "STORMConfig", "build_model", "count_parameters", "register_model"]
