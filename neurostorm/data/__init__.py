"""Data flow: ingest → preprocess → store (manifest, integrity) → datasets; ROI/FC extraction; simulated cohorts.

The public names load their modules on first use, so importing a light module of this package (the grid,
say, for the command line) does not import PyTorch.
"""

from importlib import import_module

_EXPORTS = {"ClipDataset": "datasets", "FCDataset": "datasets", "ROIDataset": "datasets", "ClipLoader": "loading",
            "PreprocessConfig": "preprocess", "preprocess": "preprocess", "Store": "store",
            "load_or_make_split": "splits", "make_split": "splits", "check_store": "integrity",
            "merge_manifest": "manifest"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neurostorm.data' has no attribute {name!r}")
    return getattr(import_module(f"neurostorm.data.{_EXPORTS[name]}"), name)
