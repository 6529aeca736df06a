"""A ``DataLoader`` of stored clips whose worker processes reuse the shared memory of their batches.

Workers read each batch's clips straight into a shared segment they keep (:mod:`neurostorm.data.shared_batches`)
and hand it over without a copy; the main process frees a segment for reuse when the last tensor that uses
it is gone. Measured in ``benchmarks/data.py``: PyTorch's own collate, which allocates a new segment per
batch, delivers about a third of the codec's rate per worker.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from neurostorm.data.datasets import collate_clips, same_dtype, stacked
from neurostorm.data.shared_batches import kept_segments, reuse_shared_batches

RELEASE = "_release"  # the key a worker's batch carries its segment's release under; ClipLoader takes it out
SPARE_BATCHES = 2  # segments per worker beyond its prefetched batches: the batch in the step, one fetched ahead


class ReusingCollate:
    """:func:`collate_clips` that, in a loader worker, hands stored clips over in a shared segment the worker
    keeps, with the segment's release under :data:`RELEASE`: read there by the dataset's ``__getitems__``
    (:func:`~neurostorm.data.datasets.read_batch`), or stacked there when they were read elsewhere (a worker's
    first batch, runs of mixed dtypes, datasets of other kinds)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots

    def __call__(self, items: list[dict]) -> dict:
        if get_worker_info() is None or not isinstance(items[0], dict) or "scale" not in items[0]:
            return collate_clips(items)
        reuse_shared_batches(self.slots)
        segments = kept_segments()
        items = same_dtype(items)
        clips = [item["x"] for item in items]  # each (1, T, X, Y, Z)
        x = stacked(clips)
        if x is None or segments.release_for(x) is None:
            x = segments.take((len(clips), *clips[0].shape), clips[0].dtype)  # (B, 1, T, X, Y, Z)
            torch.stack(clips, out=x)
            items = [{**item, "x": clip} for item, clip in zip(items, x, strict=True)]
        batch = collate_clips(items)  # x: the segment itself
        release = segments.release_for(batch["x"])
        return batch if release is None else {**batch, RELEASE: release}


class ClipLoader(DataLoader):
    """A ``DataLoader`` of stored clips (:class:`~neurostorm.data.ClipDataset`, batches as :func:`collate_clips`
    makes them) whose workers reuse the shared memory of the batches the consumer has dropped.

    >>> loader = ClipLoader(ClipDataset("store"), batch_size=8, num_workers=4, persistent_workers=True)

    Takes ``DataLoader``'s arguments; without ``collate_fn`` it collates with :class:`ReusingCollate`, keeping
    ``prefetch_factor`` + :data:`SPARE_BATCHES` segments per worker.
    """

    def __init__(self, dataset: Dataset, *args, collate_fn=None, **options) -> None:
        slots = (options.get("prefetch_factor") or 2) + SPARE_BATCHES
        super().__init__(dataset, *args, collate_fn=collate_fn or ReusingCollate(slots), **options)

    def __iter__(self) -> Iterator:
        return _Released(super().__iter__())


class _Released:
    """The loader's batches, each segment's release tied to the life of its clips in this process."""

    def __init__(self, batches: Iterator) -> None:
        self.batches = batches

    def __iter__(self) -> _Released:
        return self

    def __len__(self) -> int:
        return len(self.batches)

    def __next__(self) -> object:
        batch = next(self.batches)
        if isinstance(batch, dict) and RELEASE in batch:
            release = batch.pop(RELEASE)
            weakref.finalize(batch["x"].untyped_storage(), release)  # pinned: the copy's storage, freed later
        return batch
