"""neurostorm: a foundation model and toolkit for 4D fMRI."""

from neurostorm.errors import InputError
from neurostorm.version import __version__

_FROM_MODELS = ("build_model", "from_pretrained", "load_encoder", "load_official_checkpoint", "load_pretrained",
                "save_pretrained")
__all__ = ["InputError", "__version__", *_FROM_MODELS]


def __getattr__(name: str):
    # the model registry imports torch: load it on first use, so `neurostorm --version` stays instant
    if name in _FROM_MODELS:
        import neurostorm.models

        return getattr(neurostorm.models, name)
    raise AttributeError(f"module 'neurostorm' has no attribute {name!r}")
