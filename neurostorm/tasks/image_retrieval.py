"""fMRI-to-image retrieval: which image was a clip recorded under?

Clips are labelled by the stimulus they lie in (BIDS events, ``trial_type`` = stimulus name); ``task.stimuli``
is an ``.npz`` with ``names`` (N,) and ``embeddings`` (N, D) from any image model. Trained: the embedding head
maps the encoder into the image space with a symmetric InfoNCE loss; ``probe``: ridge regression from frozen
clip embeddings to image embeddings, fitted on the training clips. Scored on the test subjects' clips: is the
clip's stimulus among the k most similar of the test stimuli (top-1, top-5)?
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV

from neurostorm.data.datasets import EventClipDataset
from neurostorm.data.store import Store
from neurostorm.errors import InputError
from neurostorm.evaluation.figures import rank_histogram
from neurostorm.evaluation.retrieval import image_retrieval_metrics, image_retrieval_queries
from neurostorm.tasks.retrieval import RetrievalTask
from neurostorm.train.config import ExperimentConfig


def read_stimuli(path: str | None) -> tuple[list[str], np.ndarray]:
    if path is None:
        raise InputError("config", "task.stimuli is not set: an .npz of stimulus names and image embeddings")
    try:
        with np.load(path, allow_pickle=False) as saved:
            names, vectors = [str(n) for n in saved["names"]], np.asarray(saved["embeddings"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"not an .npz with 'names' and 'embeddings' arrays ({err})") from err
    if vectors.ndim != 2 or len(names) != len(vectors):
        raise InputError(path, f"{len(names)} names for embeddings of shape {vectors.shape}")
    return names, vectors




def _conditions_without_embedding(conditions: list[str], stimuli: str, names: list[str]) -> list[str]:
    """The store's conditions that ``stimuli`` has no embedding for (blocks of a task run beside the image
    runs, say), with a warning that their clips are left out; refused when no condition has one."""
    unmatched = sorted(set(conditions) - set(names))
    if len(unmatched) == len(conditions):
        raise InputError(stimuli, f"no embedding for any condition of the store's events "
                                  f"({', '.join(unmatched[:5])}); names: {', '.join(names[:5])}")
    if unmatched:
        warnings.warn(f"{stimuli}: no embedding for condition(s) {', '.join(unmatched[:8])}: their clips are "
                      "left out", stacklevel=2)
    return unmatched


class ImageRetrieval(RetrievalTask):
    kind = "image_retrieval"
    metrics = ("top1", "top5")

    def datasets(self, config: ExperimentConfig, store: Store, split: dict[str, list[str]]
                 ) -> tuple[dict[str, EventClipDataset], np.ndarray]:
        task, data = config.task, config.data
        names, vectors = read_stimuli(task.stimuli)

        def event_sets(exclude: list[str]) -> dict[str, EventClipDataset]:
            return {s: EventClipDataset(store, split[s], data.sequence_length, data.stride, task.events,
                                        task.events_delay, exclude) for s in ("train", "val", "test")}

        sets = event_sets(task.exclude_conditions)  # classes: the conditions of every run of the store
        unmatched = _conditions_without_embedding(sets["train"].classes, task.stimuli, names)
        if unmatched:
            sets = event_sets([*task.exclude_conditions, *unmatched])
        row = np.array([names.index(c) for c in sets["train"].classes])  # dataset class → embedding row
        return sets, vectors[row]  # (classes, D) in the datasets' class order

    def queries(self, config: ExperimentConfig, test: dict[str, np.ndarray], fit: Callable[[], dict],
                targets: np.ndarray, store: Store) -> pd.DataFrame:
        brain = test["output"]
        if config.mode == "probe":  # ridge map from frozen embeddings to the image space, fit on train clips
            train = fit()
            brain = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(train["output"], targets[train["y"]]).predict(brain)
        shown = np.unique(test["y"])  # candidates: the stimuli of the test clips
        queries = image_retrieval_queries(brain, np.searchsorted(shown, test["y"]), targets[shown])
        queries.insert(0, "subject", test["subject"])
        queries.insert(1, "run_id", test["run_id"])
        queries.insert(2, "start", test["start"])
        return queries

    def score(self, queries: pd.DataFrame) -> dict:
        return image_retrieval_metrics(queries)

    def figures(self, queries: pd.DataFrame, metrics: dict, folder: Path) -> None:
        rank_histogram(queries["rank"].to_numpy(), metrics["n_images"], folder / "rank_histogram.png")
