"""neurostorm: a foundation model and toolkit for 4D fMRI."""

__version__ = "0.1.0"

from neurostorm.errors import InputError

__all__ = ["InputError", "__version__"]
