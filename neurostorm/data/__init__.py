"""Data flow: ingest → preprocess → store → datasets; ROI/FC extraction; simulated cohorts."""

from neurostorm.data.datasets import ClipDataset, FCDataset, ROIDataset
from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.splits import load_or_make_split, make_split
from neurostorm.data.store import Store

__all__ = ["ClipDataset", "FCDataset", "PreprocessConfig", "ROIDataset", "Store", "load_or_make_split",
           "make_split", "preprocess"]
