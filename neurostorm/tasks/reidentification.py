"""Subject re-identification: is a held-out run nearest to another run of the same subject?

One embedding per run (the mean over its clips); each test subject's first run is a query against every other
run of the test subjects (Rank-1, mAP). Trained: the embedding head learns with NT-Xent between two clips of
the same subject (the other subjects of a batch are the negatives); ``probe``: the frozen encoder.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from neurostorm.data.datasets import ClipDataset, clip_tensor
from neurostorm.data.store import Store
from neurostorm.errors import InputError
from neurostorm.evaluation.retrieval import reidentification_metrics, reidentification_queries
from neurostorm.tasks.retrieval import RetrievalTask
from neurostorm.train.config import ExperimentConfig


class SubjectPairs(Dataset):
    """Two random clips of the same subject (from different runs when it has several), ``repeats`` per
    subject and epoch: positives for NT-Xent; the other subjects of the batch are the negatives."""

    def __init__(self, store: Store, subjects: list[str], length: int, repeats: int = 4) -> None:
        manifest = store.manifest[store.manifest["n_frames"] >= length]
        self.store, self.length, self.repeats = store, length, repeats
        self.runs = {s: rows for s, rows in manifest.groupby(manifest["subject"].astype(str)) if s in set(subjects)}
        self.subjects = sorted(self.runs)

    def __len__(self) -> int:
        return len(self.subjects) * self.repeats

    def _clip(self, record) -> torch.Tensor:
        start = int(torch.randint(0, int(record["n_frames"]) - self.length + 1, (1,)))
        return clip_tensor(self.store, record["run_id"], start, self.length)

    def __getitem__(self, item: int) -> dict:
        runs = self.runs[self.subjects[item % len(self.subjects)]]
        picks = torch.randperm(len(runs))[:2].tolist() if len(runs) > 1 else [0, 0]
        return {"x1": self._clip(runs.iloc[picks[0]]), "x2": self._clip(runs.iloc[picks[1]])}


class Reidentification(RetrievalTask):
    kind = "reidentification"
    metrics = ("rank1", "mAP")

    def datasets(self, config: ExperimentConfig, store: Store, split: dict[str, list[str]]
                 ) -> tuple[dict[str, Dataset], None]:
        length = config.data.sequence_length
        sets: dict[str, Dataset] = {s: SubjectPairs(store, split[s], length) for s in ("train", "val")}
        sets["test"] = ClipDataset(store, split["test"], length, stride=config.data.stride)
        return sets, None

    def queries(self, config: ExperimentConfig, test: dict[str, np.ndarray], fit: Callable[[], dict],
                targets: None, store: Store) -> pd.DataFrame:
        runs = sorted(set(test["run_id"]))
        per_run = np.stack([test["output"][test["run_id"] == r].mean(0) for r in runs])  # (runs, D)
        owner = np.array([test["subject"][list(test["run_id"]).index(r)] for r in runs])
        first = np.array([list(owner).index(s) == i for i, s in enumerate(owner)])
        if first.all():
            raise InputError(store.location, "re-identification needs two or more runs of the test subjects")
        queries = reidentification_queries(per_run[first], owner[first], per_run[~first], owner[~first])
        queries.insert(1, "run_id", np.array(runs)[first][np.isin(owner[first], owner[~first])])
        return queries

    def score(self, queries: pd.DataFrame) -> dict:
        return reidentification_metrics(queries)
