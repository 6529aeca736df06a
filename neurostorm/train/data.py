"""Lightning data modules: labelled clips of one store (fine-tuning) and clips of many stores (pretraining).

Splits are by subject, seeded, stratified for classification, saved as JSON in the run folder and reused.
Pretraining mixes stores by weight with an optional cap of clips per epoch; the sampler draws a new seeded
order every epoch, and Lightning shards it across DDP ranks (each rank sees a disjoint part). Stores open
only their manifest at start-up; runs are opened on first read.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from neurostorm.data.datasets import ClipDataset, ClipsOfStores, EventClipDataset, FCDataset, decoded
from neurostorm.data.files import write_json_atomic
from neurostorm.data.harmonize import harmonize_splits
from neurostorm.data.loading import ClipLoader
from neurostorm.data.roi import rois_of_store
from neurostorm.data.splits import load_or_make_split, make_split, site_split
from neurostorm.data.store import Store
from neurostorm.errors import InputError
from neurostorm.evaluation.target import Target
from neurostorm.models import model_input
from neurostorm.train.config import ExperimentConfig


def open_store(path: str, config: ExperimentConfig) -> Store:
    """A store to train or evaluate on, without its flagged runs when ``data.exclude_flagged``."""
    return Store(path, exclude_flagged=config.data.exclude_flagged)


def subjects_table(store: Store) -> pd.DataFrame:
    return store.manifest.drop_duplicates("subject").astype({"subject": str})


def sites_of(store: Store) -> dict[str, str]:
    """Subject → site from the store's labels ({} without a 'site' column)."""
    if "site" not in store.manifest.columns:
        return {}
    table = subjects_table(store)
    return dict(zip(table["subject"], table["site"].astype(str), strict=True))


def split_path(config: ExperimentConfig, run_dir: Path) -> Path:
    """The subject split file: ``data.split_file`` if set, else RUN_DIR/split.json."""
    return Path(config.data.split_file) if config.data.split_file else Path(run_dir) / "split.json"


# loader processes per GPU when data.num_workers is not set: one worker delivers about 85 base clips/s of an
# int8 store cold and 100 warm (benchmarks data suite, data-loader-per-worker), so 6 feed the few hundred
# clips/s of base-model training on one H100-class GPU with room for slower disks (capped at the cores but one)
LOADER_WORKERS_ON_GPU = 6


def make_loader(dataset: Dataset, config: ExperimentConfig, **options) -> DataLoader:
    """A loader with the run's batch size and ``data.num_workers`` (kept alive between epochs; not set: none on
    a CPU, :data:`LOADER_WORKERS_ON_GPU` or the cores but one on a GPU), batches of stored clips
    (:class:`ClipLoader`: workers reuse the shared memory of dropped batches), in pinned host memory when
    training on a GPU so that the copy to the device runs beside the step; ``options`` go to ``DataLoader``
    (shuffle, sampler, generator, …)."""
    on_gpu = config.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    workers = config.data.num_workers
    if workers is None:  # the CPU's cores train; a GPU's step needs the reads beside it
        workers = min(LOADER_WORKERS_ON_GPU, max(1, (os.cpu_count() or 1) - 1)) if on_gpu else 0
    return ClipLoader(dataset, batch_size=config.data.batch_size, num_workers=workers, pin_memory=on_gpu,
                      persistent_workers=workers > 0, prefetch_factor=config.data.prefetch_batches if workers else None,
                      **options)


@torch.inference_mode()
def over_clips(fn, loader: DataLoader) -> dict[str, np.ndarray]:
    """``fn(x)`` on every batch of a clip loader, its stored clips decoded to float32 (:func:`decoded`):
    {"output" (N, ...), "subject", "run_id", "start", "y"}; ``y`` is NaN where the dataset has no labels."""
    columns: dict[str, list] = {"output": [], "subject": [], "run_id": [], "start": [], "y": []}
    for batch in map(decoded, loader):
        columns["output"].append(fn(batch["x"]).float().numpy())
        columns["subject"] += list(batch["subject"])
        columns["run_id"] += list(batch["run_id"])
        columns["start"] += [int(s) for s in batch["start"]]
        columns["y"].append(batch["y"].numpy() if "y" in batch else np.full(len(batch["subject"]), np.nan))
    return {k: np.concatenate(v) if k in ("output", "y") else np.asarray(v) for k, v in columns.items()}


class LabelledClips(L.LightningDataModule):
    """Train / val / test clips of the first store of ``config.data``, labelled by ``config.task.label``; for
    a model that reads connectivity, each split holds one FC matrix per run instead (ROIs of ``data.atlas``).
    A per-clip ``target`` labels clips by the conditions of their runs' events (``config.task.events``)."""

    def __init__(self, config: ExperimentConfig, run_dir: Path, target: Target) -> None:
        super().__init__()
        self.config, self.run_dir, self.target = config, Path(run_dir), target
        if not config.data.stores:
            raise InputError("config", "data.stores is empty: give the store to train on")
        self.store = open_store(config.data.stores[0].path, config)
        split_file = split_path(config, self.run_dir)
        self.generator = torch.Generator().manual_seed(config.trainer.seed)  # training order; saved in checkpoints
        self.harmonization: dict | None = None  # data.harmonize: what was fitted, for the run's metrics
        if target.per_clip:
            self._event_clips(config, split_file)
        else:
            self._labelled_clips(config, split_file)
        self._warn_missing_classes(split_file)

    def _labelled_clips(self, config: ExperimentConfig, split_file: Path) -> None:
        """Subject labels: clips (or one FC matrix per run) of each split's subjects."""
        if config.task.label is None:
            raise InputError("config", "task.label is not set: which label column to predict")
        if config.task.label not in self.store.manifest.columns:
            raise InputError(self.store.location, f"no label column {config.task.label!r} in the store; "
                                                  f"columns: {sorted(self.store.manifest.columns)}")
        labelled = subjects_table(self.store).dropna(subset=[config.task.label])
        stratify = config.task.label if self.target.stratified else None
        if config.data.test_sites and not split_file.exists():  # leave-site-out: the split is fixed by site
            split_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(split_file, {**site_split(labelled, config.data.test_sites, config.data.val_share,
                                                        config.trainer.seed), "test_sites": config.data.test_sites})
        self.split = load_or_make_split(split_file, labelled, config.data.split_fractions, config.trainer.seed,
                                        stratify=stratify)
        data, label, kind = config.data, config.task.label, self.target.estimator
        self.input = model_input(config.model.name)
        if self.input == "fc":
            self.roi_dir = rois_of_store(self.store.location, data.atlas, data.roi_dir or self.run_dir / "roi")
            runs = set(self.store.manifest["run_id"]) if data.exclude_flagged else None
            self.datasets = {name: FCDataset(self.roi_dir, self.split[name], label, task=kind, runs=runs)
                             for name in ("train", "val", "test")}
            if data.harmonize == "combat":
                self._harmonize_fc()
            return
        self.datasets = {
            name: ClipDataset(self.store, self.split[name], data.sequence_length, stride=data.stride,
                              random_crop=data.random_crop and name == "train", label=label, task=kind)
            for name in ("train", "val", "test")}

    def _harmonize_fc(self) -> None:
        """ComBat of every split's FC entries above the diagonal, fitted on the train + val runs."""
        rows, cols = np.triu_indices(self.datasets["train"].matrices.shape[1], k=1)
        features = {name: d.matrices[:, rows, cols] for name, d in self.datasets.items()}
        subjects = {name: d.runs["subject"] for name, d in self.datasets.items()}
        harmonised, self.harmonization = self.harmonize(features, subjects, fit_on=("train", "val"))
        for name, dataset in self.datasets.items():
            matrices = dataset.matrices.copy()
            matrices[:, rows, cols] = matrices[:, cols, rows] = harmonised[name]
            dataset.matrices = matrices

    def harmonize(self, features: dict[str, np.ndarray], subjects: dict[str, Sequence[str]],
                  fit_on: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict]:
        """``data.harmonize=combat`` of named sets of feature rows (N, F) of the given subjects: ComBat by site
        (:mod:`neurostorm.data.harmonize`) fitted on the ``fit_on`` sets only; (harmonised, summary)."""
        site_of = sites_of(self.store)
        if not site_of:
            raise InputError(self.store.location, "data.harmonize=combat needs a 'site' column in the labels")
        sites = {name: np.array([site_of[str(s)] for s in subjects[name]]) for name in features}
        try:
            return harmonize_splits(features, sites, fit_on)
        except ValueError as err:
            raise InputError(self.store.location, f"data.harmonize=combat: {err}") from None

    def _event_clips(self, config: ExperimentConfig, split_file: Path) -> None:
        """Per-clip labels: every split holds the condition-labelled clips of its subjects' runs."""
        task, data = config.task, config.data
        self.input = "clips"
        if model_input(config.model.name) != "clips":
            raise InputError("config", f"{config.model.name} reads connectivity matrices; task state needs clips")
        self.split = load_or_make_split(split_file, subjects_table(self.store), data.split_fractions,
                                        config.trainer.seed)
        self.datasets = {name: EventClipDataset(self.store, self.split[name], data.sequence_length, data.stride,
                                                task.events, task.events_delay, task.exclude_conditions)
                         for name in ("train", "val", "test")}

    def _warn_missing_classes(self, split_file: Path) -> None:
        """Classes index the whole label column; say so when a split's training set lacks some of them."""
        if not self.classes:
            return
        seen = set(np.unique(self.train_targets()).astype(int))
        missing = [c for k, c in enumerate(self.classes) if k not in seen]
        if missing:
            warnings.warn(f"{split_file}: the training subjects hold no {', '.join(missing)} of "
                          f"{self.config.task.label or 'the conditions'!r} (classes {self.classes}); the model "
                          "cannot learn to predict them", stacklevel=2)

    @property
    def classes(self) -> list[str] | None:
        return self.datasets["train"].classes

    def train_targets(self) -> np.ndarray:
        train = self.datasets["train"]
        if isinstance(train, EventClipDataset):
            return np.array([train.classes.index(c) for _, _, c in train.clips])
        return train.targets()

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        return make_loader(self.datasets[name], self.config, shuffle=shuffle,
                           generator=self.generator if name == "train" else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def loader(self, name: str) -> DataLoader:
        """An in-order loader over one split (for embedding and prediction)."""
        return self._loader(name, shuffle=False)


class StoreMixSampler(Sampler[int]):
    """Indices into the clips of several stores (:class:`ClipsOfStores`): per epoch
    ``weight × min(size, max_clips)`` clips of each store, drawn without replacement where they fit, shuffled
    together. The order depends on (seed, epoch) only: Lightning sets the epoch (so a resumed run replays the
    same orders); without it, each pass advances it."""

    def __init__(self, sizes: list[int], weights: list[float], caps: list[int | None], seed: int = 0) -> None:
        self.sizes, self.weights, self.caps, self.seed = sizes, weights, caps, seed
        self.epoch = 0
        self.counts = [int(round(w * (n if c is None else min(n, c)))) for n, w, c in zip(sizes, weights, caps,
                                                                                           strict=True)]

    def __len__(self) -> int:
        return sum(self.counts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        offsets = np.cumsum([0, *self.sizes[:-1]])
        chosen = [offset + rng.choice(size, count, replace=count > size)
                  for offset, size, count in zip(offsets, self.sizes, self.counts, strict=True) if count]
        order = np.concatenate(chosen) if chosen else np.zeros(0, dtype=int)
        return map(int, rng.permutation(order))  # lazily: an epoch of millions of clips is one int64 array


class PretrainClips(L.LightningDataModule):
    """Clips of every store of ``config.data.stores``; a share of each store's subjects held out for val."""

    def __init__(self, config: ExperimentConfig, run_dir: Path) -> None:
        super().__init__()
        self.config, self.run_dir = config, Path(run_dir)
        if not config.data.stores:
            raise InputError("config", "data.stores is empty: give at least one store to pretrain on")
        data, seed = config.data, config.trainer.seed
        train_sets, val_sets = [], []
        held = data.val_subjects_for_pretraining
        for source in data.stores:
            store = open_store(source.path, config)
            subjects = subjects_table(store)
            if held > 0 and len(subjects) >= 3:
                split = make_split(subjects, (1 - held, held / 2, held / 2), seed)
                train_ids, val_ids = split["train"], split["val"] + split["test"]
            else:
                train_ids, val_ids = subjects["subject"].tolist(), []
            train_sets.append(ClipDataset(store, train_ids, data.sequence_length, random_crop=data.random_crop))
            if val_ids:
                val_sets.append(ClipDataset(store, val_ids, data.sequence_length, stride=data.stride))
        self.train_set = ClipsOfStores(train_sets)
        self.val_set = ClipsOfStores(val_sets) if val_sets else None
        self.sampler = StoreMixSampler([len(d) for d in train_sets], [s.weight for s in data.stores],
                                       [s.max_clips for s in data.stores], seed)
        self.generator = torch.Generator().manual_seed(seed)  # the loader's own draws; saved in checkpoints

    def mean_intensity(self, img_size: tuple[int, int, int], clips: int = 8) -> float:
        """Mean voxel value of ``clips`` training clips spread evenly over the training set."""
        picks = np.linspace(0, len(self.train_set) - 1, min(clips, len(self.train_set))).astype(int)
        return float(np.mean([fit_to_model(decoded(self.train_set[int(i)])["x"][None], img_size).mean()
                              for i in picks]))

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.config, sampler=self.sampler, generator=self.generator)

    def val_dataloader(self) -> DataLoader:
        return [] if self.val_set is None else make_loader(self.val_set, self.config)


def pool_factor(size: tuple[int, ...], img_size: tuple[int, ...]) -> int | None:
    """The integer k with size = k · img_size on every axis, or None."""
    factors = {s // m for s, m in zip(size, img_size, strict=True) if m and s % m == 0}
    k = factors.pop() if len(factors) == 1 else None
    return k if k and all(s == m * k for s, m in zip(size, img_size, strict=True)) else None


def check_stores_fit(paths: list[str], img_size: tuple[int, int, int], model: str) -> None:
    """Refuse, naming the store, a store whose grid the model cannot read (clips pool down by an integer
    factor, never up)."""
    for path in paths:
        store = Store(path)
        shape = tuple(store.info["grid"]["shape"])
        if pool_factor(shape, tuple(img_size)) is None:
            raise InputError(store.location, f"its clips of {shape} voxels ({store.info['grid']['name']}) do not fit "
                                             f"{model}'s input of {tuple(img_size)}: preprocess with the --grid "
                                             "of that size, or use a model for this grid")


def fit_to_model(x: torch.Tensor, img_size: tuple[int, int, int]) -> torch.Tensor:
    """Average-pool clips (B, 1, X, Y, Z, T) from a finer store grid to the model's input size (integer factor)."""
    size = tuple(x.shape[2:5])
    if size == tuple(img_size):
        return x
    k = pool_factor(size, tuple(img_size))
    if k is None:
        raise ValueError(f"clips of {size} voxels do not fit the model's {tuple(img_size)}; preprocess with the "
                         "matching --grid")
    b, _, _, _, _, t = x.shape
    frames = x.permute(0, 5, 1, 2, 3, 4).reshape(b * t, 1, *size)
    pooled = torch.nn.functional.avg_pool3d(frames, k)
    return pooled.reshape(b, t, 1, *img_size).permute(0, 2, 3, 4, 5, 1)
