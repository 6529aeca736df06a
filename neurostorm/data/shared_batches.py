"""Shared memory that a loader worker process reuses for the batches it hands over.

A ``DataLoader`` worker gives each batch to the main process in shared memory. PyTorch allocates a new
shared segment for every batch, and the kernel then faults in and zeroes each of its 4 KiB pages: for a
base-size int8 clip (96³ × 20 frames, 17.7 MB) that costs about as much as decompressing it, and one worker
delivered a third of what the codec decodes (``benchmarks/data.py``). Here a worker keeps a few segments and
reads a batch into one the main process has let go of: the batch carries a :class:`Release` that the main
process calls when the last tensor using its memory is gone (:class:`neurostorm.data.loading.ClipLoader`
does), and only then may the worker write it again. A batch the consumer keeps is never overwritten; a
worker that finds no free segment allocates a new one, as PyTorch would.

Reuse is on only in the worker processes of a :class:`~neurostorm.data.loading.ClipLoader` (from their
second batch); elsewhere the clip datasets read each item on its own.
"""

from __future__ import annotations

import os

import torch


class Release:
    """Marks one of a worker's segments free. Travels with its batch; not a tensor, so pinning passes it on."""

    def __init__(self, free: torch.Tensor, slot: int) -> None:
        self.free, self.slot = free, slot

    def __call__(self) -> None:
        self.free[self.slot] = 1


class SharedBatches:
    """The shared-memory segments of one worker process, at most ``slots`` kept for reuse."""

    def __init__(self, slots: int) -> None:
        self.free = torch.zeros(slots, dtype=torch.int8).share_memory_()  # (slots,) 1: the consumer let go
        self.buffers: list[torch.Tensor] = []

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A shared tensor of ``shape`` to fill: a free segment (its leading rows), a new one kept in a slot
        that is free or not yet used, or, when every slot's batch is still held, a new one not kept."""
        free = [slot for slot in range(len(self.buffers)) if self.free[slot]]
        for slot in free:
            buffer = self.buffers[slot]
            if buffer.dtype == dtype and buffer.shape[1:] == shape[1:] and len(buffer) >= shape[0]:
                self.free[slot] = 0
                return buffer[:shape[0]]
        fresh = torch.empty(shape, dtype=dtype).share_memory_()
        if free or len(self.buffers) < len(self.free):
            slot = free[0] if free else len(self.buffers)
            self.buffers[slot:slot + 1] = [fresh]
            self.free[slot] = 0
        return fresh

    def release_for(self, x: torch.Tensor) -> Release | None:
        """The release of the kept segment ``x`` lies in; None for memory this worker does not keep."""
        address = x.untyped_storage().data_ptr()
        for slot, buffer in enumerate(self.buffers):
            if buffer.untyped_storage().data_ptr() == address:
                return Release(self.free, slot)
        return None


_batches: SharedBatches | None = None
_owner: int | None = None  # the process _batches belongs to (a forked worker starts with its parent's state)


def reuse_shared_batches(slots: int) -> None:
    """Keep up to ``slots`` shared segments in this process (a loader worker) from now on."""
    global _batches, _owner
    if _owner != os.getpid():
        _batches, _owner = SharedBatches(slots), os.getpid()


def kept_segments() -> SharedBatches | None:
    """The segments this process keeps; None where it keeps none (the main process, or a worker not yet
    set up by :func:`reuse_shared_batches`)."""
    return _batches if _owner == os.getpid() else None
