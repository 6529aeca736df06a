"""neurostorm: a foundation model and toolkit for 4D fMRI."""

__version__ = "0.1.0"

from neurostorm.errors import InputError

__all__ = ["InputError", "__version__", "build_model"]


def __getattr__(name: str):
    # the model registry imports torch: load it on first use, so `neurostorm --version` stays instant
    if name == "build_model":
        from neurostorm.models import build_model

        return build_model
    raise AttributeError(f"module 'neurostorm' has no attribute {name!r}")
