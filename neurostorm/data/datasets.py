"""PyTorch datasets over a preprocessed store (clips) and over ROI outputs (time series, FC)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, Dataset, default_collate

from neurostorm.data.shared_batches import kept_segments
from neurostorm.data.store import Store
from neurostorm.errors import InputError


class _Labelled:
    """Run selection and label lookup shared by the datasets.

    ``task="auto"`` treats numeric columns as regression targets (float) and others as classes (long
    indices into ``classes``); pass ``task="classification"`` for numeric codes such as 0/1 diagnoses.
    Classes come from the whole manifest, so every split maps a class to the same index.
    """

    def _select_runs(self, manifest: pd.DataFrame, subjects: Sequence[str] | None, label: str | None,
                     task: str, runs: set[str] | None = None) -> pd.DataFrame:
        """Set up the labels from ``manifest``; return the runs of ``subjects`` (and of ``runs`` when given)
        that have a label."""
        self.label = label
        self.classes: list[str] | None = None
        rows = manifest if subjects is None else manifest[manifest["subject"].astype(str).isin(set(subjects))]
        rows = rows if runs is None else rows[rows["run_id"].isin(runs)]
        kept = [c for c in ("run_id", "subject", "n_frames", label) if c in manifest.columns]
        rows = rows[kept]  # what items need: a 50,000-run manifest's other columns stay out of every split
        if label is None:
            return rows.reset_index(drop=True)
        if label not in manifest.columns:
            raise KeyError(f"no label column {label!r}; columns: {sorted(manifest.columns)}")
        if task not in ("auto", "classification", "regression"):
            raise ValueError(f"task must be auto, classification or regression, got {task!r}")
        column = manifest[label]
        if task == "regression" or (task == "auto" and pd.api.types.is_numeric_dtype(column)):
            self._label_of = {r: float(v) for r, v in zip(manifest["run_id"], column, strict=True)}
        else:
            self.classes = sorted(column.dropna().astype(str).unique())
            index = {c: i for i, c in enumerate(self.classes)}
            self._label_of = {r: index[str(v)] for r, v in zip(manifest["run_id"], column, strict=True)
                              if pd.notna(v)}
        return rows[rows[label].notna()].reset_index(drop=True)

    def targets(self) -> np.ndarray:
        """The label of every selected run, in order (class indices or values)."""
        return np.array([self._label_of[r] for r in self.runs["run_id"]])

    def _fields(self, record: pd.Series, **extra: object) -> dict:
        """An item's fields but ``x``: ``subject``, ``run_id``, any ``extra`` fields, and ``y`` when labelled."""
        fields = {"subject": str(record["subject"]), "run_id": record["run_id"], **extra}
        if self.label is not None:
            value = self._label_of[record["run_id"]]
            fields["y"] = torch.tensor(value, dtype=torch.float32 if self.classes is None else torch.long)
        return fields

    def _sample(self, record: pd.Series, x: torch.Tensor, **extra: object) -> dict:
        return {"x": x, **self._fields(record, **extra)}


class _StoredClips:
    """Items of stored clips, one at a time or a batch at once (``__getitems__``, which a ``DataLoader``
    calls; see :func:`read_batch`). A dataset says where each item lies (``_located``)."""

    store: Store
    sequence_length: int

    def _located(self, item: int) -> tuple[str, int, dict]:
        """The run and first frame of an item's clip, and the item's other fields."""
        raise NotImplementedError

    def __getitem__(self, item: int) -> dict:
        return self._item(*self._located(item))

    def _item(self, run_id: str, start: int, fields: dict) -> dict:
        x, scale = stored_clip(self.store, run_id, start, self.sequence_length)
        return {"x": x, "scale": scale, **fields}

    def __getitems__(self, items: list[int]) -> list[dict]:
        return read_batch([(self, item) for item in items])


def read_batch(parts: list[tuple[_StoredClips, int]]) -> list[dict]:
    """The items of one batch, (dataset, index) pairs. In a :class:`~neurostorm.data.loading.ClipLoader` worker
    their clips are read into one (B, 1, T, X, Y, Z) segment of shared memory it reuses, which
    :func:`collate_clips` hands over without a copy; elsewhere, or when their dtypes or shapes differ (int8 and
    float16 runs: :func:`collate_clips` makes them one), each is read on its own."""
    located = [(dataset, *dataset._located(item)) for dataset, item in parts]
    dtypes = {dataset.store.stored_dtype(run_id) for dataset, run_id, _, _ in located}
    shapes = {(dataset.sequence_length, *dataset.store.grid.shape) for dataset, *_ in located}
    segments = kept_segments()
    if segments is None or len(dtypes) > 1 or len(shapes) > 1:
        return [dataset._item(*where) for dataset, *where in located]
    dtype = torch.from_numpy(np.empty(0, dtypes.pop())).dtype
    x = segments.take((len(parts), 1, *shapes.pop()), dtype)  # (B, 1, T, X, Y, Z)
    batch = []
    for clip, (dataset, run_id, start, fields) in zip(x, located, strict=True):
        _, scale = dataset.store.read_stored(run_id, start, dataset.sequence_length, out=clip[0].numpy())
        batch.append({"x": clip, "scale": torch.from_numpy(scale), **fields})
    return batch


class ClipsOfStores(ConcatDataset):
    """The clip datasets of several stores as one (pretraining's); a batch is read at once, as by one of them
    (:func:`read_batch`)."""

    def __getitems__(self, items: list[int]) -> list[dict]:
        parts = []
        for item in items:
            which = bisect.bisect_right(self.cumulative_sizes, item)
            parts.append((self.datasets[which], item - (self.cumulative_sizes[which - 1] if which else 0)))
        return read_batch(parts)


def clip_starts(n_frames: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Every clip of ``length`` frames starting each ``stride`` frames in runs of ``n_frames`` (R,): the run
    (row) and first frame of each clip, two (N,) arrays (a million clips take 16 MB)."""
    counts = np.maximum((n_frames - length) // stride + 1, 0)  # (R,)
    rows = np.repeat(np.arange(len(n_frames)), counts)
    first_of_run = np.repeat(np.cumsum(counts) - counts, counts)
    return rows, (np.arange(len(rows)) - first_of_run) * stride


class ClipDataset(_StoredClips, Dataset, _Labelled):
    """Clips of ``sequence_length`` frames from a store, in the store's own bytes.

    Clips start every ``stride`` frames (default: non-overlapping). With ``random_crop`` each item draws a
    random start inside its run instead (training-time augmentation in time); the number of items per
    epoch stays the same. Items are dicts with ``x`` (1, T, X, Y, Z): the stored values in the stored
    order (int8 or float16), its per-frame ``scale`` (T,) float32, ``subject``, ``run_id``, ``start`` and
    ``y`` when a label column is given. :func:`decoded` turns a batch of them into float32 model input
    (B, 1, X, Y, Z, T) where it runs (on the GPU after the copy, so a quarter of float32's bytes cross for
    int8). Batch them with :func:`collate_clips`.
    """

    def __init__(self, store: Store | str, subjects: Sequence[str] | None = None, sequence_length: int = 20,
                 stride: int | None = None, random_crop: bool = False, label: str | None = None,
                 task: str = "auto") -> None:
        self.store = store if isinstance(store, Store) else Store(store)
        self.sequence_length = sequence_length
        self.stride = stride or sequence_length
        self.random_crop = random_crop
        self.runs = self._select_runs(self.store.manifest, subjects, label, task)
        self.rows, self.starts = clip_starts(self.runs["n_frames"].to_numpy(dtype=np.int64), sequence_length,
                                             self.stride)

    def __len__(self) -> int:
        return len(self.rows)

    def _located(self, item: int) -> tuple[str, int, dict]:
        row, start = int(self.rows[item]), int(self.starts[item])
        record = self.runs.iloc[row]
        if self.random_crop:
            start = int(torch.randint(0, int(record["n_frames"]) - self.sequence_length + 1, (1,)))
        return record["run_id"], start, self._fields(record, start=start)


def stored_clip(store: Store, run_id: str, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [start, start + length) of a run as stored, (1, T, X, Y, Z) int8 or float16 (no copy, no
    reordering: the loader's work is the decompression), and their scales (T,) float32."""
    values, scale = store.read_stored(run_id, start, length)  # (T, X, Y, Z), (T,)
    return torch.from_numpy(values)[None], torch.from_numpy(scale)


def _scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Stored clips (..., T, X, Y, Z) times their scales (..., T): float32, still in the stored order."""
    frames = (*scale.shape[:-1], *[1] * (x.dim() - scale.dim() - 3), scale.shape[-1], 1, 1, 1)
    return x.float() * scale.float().reshape(frames)


def decode_clips(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Stored clips (..., T, X, Y, Z) int8 or float16 with scales (..., T) → float32 model input
    (..., X, Y, Z, T): the numbers of :meth:`Store.read_clip` (one float32 product per voxel), on whatever
    device the clips are (a batch on the GPU: the reordering costs nothing there)."""
    return torch.movedim(_scaled(x, scale), -4, -1).contiguous()


def decoded(batch: dict) -> dict:
    """A batch of clip items with ``x`` float32 model input (``scale`` applied and dropped); batches that hold
    no stored clips (connectivity, ROI series, already decoded clips) pass unchanged."""
    if "scale" not in batch:
        return batch
    return {**{k: v for k, v in batch.items() if k != "scale"}, "x": decode_clips(batch["x"], batch["scale"])}


def same_dtype(items: list[dict]) -> list[dict]:
    """Dataset items whose stored clips share one dtype: int8 and float16 runs mixed in one batch are scaled to
    float32 (still in the stored order), with unit scales; items of one dtype come back as they are."""
    if len({item["x"].dtype for item in items if "scale" in item}) <= 1:
        return items
    return [{**item, "x": _scaled(item["x"], item["scale"]), "scale": torch.ones_like(item["scale"])}
            if "scale" in item else item for item in items]


def stacked(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The tensor (N, ...) whose rows ``tensors`` (N of one shape) already are, in order; None when they are
    not consecutive in one storage."""
    first = tensors[0]
    address, step = first.untyped_storage().data_ptr(), first.numel()
    for k, tensor in enumerate(tensors):
        if (tensor.untyped_storage().data_ptr() != address or not tensor.is_contiguous()
                or tensor.shape != first.shape or tensor.dtype != first.dtype
                or tensor.storage_offset() != first.storage_offset() + k * step):
            return None
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (len(tensors), *first.shape))


def collate_clips(items: list[dict]) -> dict:
    """``default_collate`` of dataset items, stored clips of different dtypes made one first (:func:`same_dtype`);
    clips read into one tensor (a batch of ``__getitems__``) are that tensor, not a copy."""
    items = same_dtype(items)
    x = stacked([item["x"] for item in items]) if "scale" in items[0] else None
    if x is None:
        return default_collate(items)
    return {**default_collate([{k: v for k, v in item.items() if k != "x"} for item in items]), "x": x}


def clip_tensor(store: Store, run_id: str, start: int, length: int) -> torch.Tensor:
    """Frames [start, start + length) of a run as float32 model input (1, X, Y, Z, T)."""
    return decode_clips(*stored_clip(store, run_id, start, length))


class EventClipDataset(_StoredClips, Dataset):
    """Clips labelled by the task condition they lie in, from each run's BIDS ``*_events.tsv``.

    Events are looked up next to the run's source file and under ``events_roots`` (a raw BIDS dataset),
    matched by subject, session, task and run. Only clips wholly inside one condition's block are kept
    (see :mod:`neurostorm.data.events`); conditions in ``exclude`` are dropped. Classes come from every run
    of the store, so all splits share one class index. Items as :class:`ClipDataset` (stored bytes with
    ``scale``), ``y`` per clip.
    """

    def __init__(self, store: Store | str, subjects: Sequence[str] | None = None, sequence_length: int = 40,
                 stride: int | None = None, events_roots: Sequence[str | Path] = (), delay: float = 0.0,
                 exclude: Sequence[str] = ()) -> None:
        from neurostorm.data.events import condition_clips, events_for, frame_conditions, read_events

        self.store = store if isinstance(store, Store) else Store(store)
        self.sequence_length = sequence_length
        clips: list[tuple[pd.Series, int, str]] = []
        for _, record in self.store.manifest.iterrows():
            path = events_for(record["source_path"], list(events_roots))
            if path is None:
                continue
            conditions = frame_conditions(read_events(path), int(record["n_frames"]), float(record["tr"]), delay)
            clips += [(record, start, c) for start, c in condition_clips(conditions, sequence_length, stride,
                                                                           tuple(exclude))]
        if not clips:
            raise InputError(self.store.location, "no run has an events.tsv with a block as long as a clip; "
                                                  "give the raw BIDS folder as task.events")
        self.classes = sorted({c for _, _, c in clips})
        chosen = None if subjects is None else set(map(str, subjects))
        self.clips = [c for c in clips if chosen is None or str(c[0]["subject"]) in chosen]

    def __len__(self) -> int:
        return len(self.clips)

    def _located(self, item: int) -> tuple[str, int, dict]:
        record, start, condition = self.clips[item]
        return record["run_id"], start, {"subject": str(record["subject"]), "run_id": record["run_id"],
                                         "start": start,
                                         "y": torch.tensor(self.classes.index(condition), dtype=torch.long)}


class ROIDataset(Dataset, _Labelled):
    """ROI time series (T, R) from an ``neurostorm roi`` folder; optional fixed-length windows."""

    def __init__(self, roi_dir: str | Path, subjects: Sequence[str] | None = None, label: str | None = None,
                 sequence_length: int | None = None, task: str = "auto") -> None:
        self.root = Path(roi_dir)
        self.runs = self._select_runs(pd.read_parquet(self.root / "manifest.parquet"), subjects, label, task)
        self.sequence_length = sequence_length
        self.index: list[tuple[int, int]] = []
        for row, n_frames in enumerate(self.runs["n_frames"].astype(int)):
            length = sequence_length or n_frames
            self.index.extend((row, start) for start in range(0, n_frames - length + 1, length))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict:
        row, start = self.index[item]
        record = self.runs.iloc[row]
        series = np.load(self.root / "timeseries" / f"{record['run_id']}.npy", mmap_mode="r")
        stop = start + (self.sequence_length or series.shape[0])
        return self._sample(record, torch.from_numpy(np.array(series[start:stop], dtype=np.float32)), start=start)


def check_connectomes(matrices: np.ndarray, run_ids: list[str], source: Path) -> None:
    """Refuse, naming the run, connectivity that is not (N, R, R), not symmetric, or holds NaN/Inf."""
    if matrices.ndim != 3 or matrices.shape[1] != matrices.shape[2]:
        raise InputError(source, f"connectivity must be square matrices (N, R, R), got shape {matrices.shape}")
    finite = np.isfinite(matrices).all(axis=(1, 2))
    asymmetry = np.abs(np.where(np.isfinite(matrices), matrices, 0) - matrices.transpose(0, 2, 1)).max(axis=(1, 2))
    for run_id, ok, gap in zip(run_ids, finite, asymmetry, strict=True):
        if not ok:
            raise InputError(source, f"run {run_id}: NaN or Inf in its connectivity matrix")
        if gap > 1e-4:
            raise InputError(source, f"run {run_id}: connectivity matrix not symmetric (largest |A - Aᵀ| {gap:.3g})")


class FCDataset(Dataset, _Labelled):
    """Connectivity matrices (R, R) of one kind (``fisher_z``, ``pearson`` or ``partial``), one per run (of
    ``runs`` when given)."""

    def __init__(self, roi_dir: str | Path, subjects: Sequence[str] | None = None, label: str | None = None,
                 kind: str = "fisher_z", task: str = "auto", runs: set[str] | None = None) -> None:
        root = Path(roi_dir)
        self.runs = self._select_runs(pd.read_parquet(root / "manifest.parquet"), subjects, label, task, runs)
        with np.load(root / "fc.npz") as fc:
            if kind not in fc:
                raise KeyError(f"{root / 'fc.npz'} has no {kind!r} matrices (have {sorted(fc.files)})")
            position = {r: i for i, r in enumerate(fc["run_id"].tolist())}
            self.matrices = fc[kind][[position[r] for r in self.runs["run_id"]]]
        check_connectomes(self.matrices, self.runs["run_id"].tolist(), root / "fc.npz")

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, item: int) -> dict:
        record = self.runs.iloc[item]
        return self._sample(record, torch.from_numpy(self.matrices[item]), start=0)
