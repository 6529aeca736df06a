"""The runs of a store: one zarr v3 group each, ``runs/<run_id>.zarr`` (layout in :mod:`neurostorm.data.store`).

A run is written by :class:`RunWriter` under a temporary name and published whole by its ``commit``; its
group's attributes hold the run's record, ``complete: true`` last, so :func:`completed_record` tells a
finished run from a partial one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.storage import FsspecStore, LocalStore

from neurostorm.data.files import filesystem, is_url, owned_temporary

SHARD_FRAMES = 20
# how a frame's bytes are compressed (preprocess --codec), measured in benchmarks/data.py on 96³ int8 frames:
# zstd (level 3) 4.4× smaller, one core decodes ~165 clips/s of 20 frames; lz4 (blosc, no shuffle, a zarr v3
# core codec) 3.2× smaller, ~560 clips/s; shuffling the bits or bytes of int8 frames compresses them worse
CODECS = {"zstd": ZstdCodec(), "lz4": BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")}
DECODERS = {"ZstdCodec": Zstd(), "BloscCodec": Blosc()}  # each decodes any frame of its codec, whatever settings
OPEN_ERRORS = (OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError)  # a run group missing or broken


class DataDigest:
    """A run's ``data_sha256``: SHA-256 of its stored values frame by frame, then of its int8 scales (float32;
    none for a float16 run) — computed as the run is written, and again by ``neurostorm check --data``."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def add_frames(self, frames: np.ndarray) -> None:
        """One frame (X, Y, Z) or consecutive frames (T, X, Y, Z), in storage dtype."""
        self._sha.update(np.ascontiguousarray(frames).tobytes())

    def finish(self, scales) -> str:
        """The hex digest, once the scales (an empty list when none) are added last."""
        self._sha.update(np.asarray(scales, dtype=np.float32).tobytes())
        return self._sha.hexdigest()


def _same_source(record: dict | None, other: dict) -> bool:
    return record is not None and all(record.get(k) == other[k] for k in ("source_sha256", "params"))


class RunWriter:
    """Write one run's frames to ``runs/<run_id>.zarr`` of a store, atomically.

    Frames are appended in time order with :meth:`append`; :meth:`commit` writes the record, marks the
    group complete and publishes it. Without ``commit`` nothing appears under the final name.
    """

    def __init__(self, location: str, run_id: str, n_frames: int, grid_shape: tuple[int, int, int],
                 dtype: str, mask: np.ndarray, codec: str = "zstd") -> None:
        self.location, self.run_id = location, run_id
        if is_url(location):  # staged on local disk, uploaded by commit
            self.tmp = Path(tempfile.mkdtemp(prefix="neurostorm-")) / f"{run_id}.zarr"
        else:
            self.tmp = owned_temporary(Path(location) / "runs" / f"{run_id}.zarr")
        try:  # stopped here (a signal), the temporary goes with it
            self.group = zarr.open_group(LocalStore(self.tmp), mode="w")
            shard = (min(SHARD_FRAMES, n_frames), *grid_shape)
            self.bold = self.group.create_array("bold", shape=(n_frames, *grid_shape), dtype=dtype,
                                                chunks=(1, *grid_shape), shards=shard, compressors=CODECS[codec])
            self.scale = self.group.create_array("scale", shape=(n_frames,), dtype="float32") \
                if dtype == "int8" else None
            self.group.create_array("mask", data=np.asarray(mask, dtype=bool))
        except BaseException:
            self.abort()
            raise
        self._buffer: list[np.ndarray] = []
        self._scales: list[float] = []
        self._written = 0
        self._digest = DataDigest()

    def append(self, frame: np.ndarray, scale: float | None = None) -> None:
        """Add the next frame (X, Y, Z) in storage dtype, with its int8 scale."""
        self._buffer.append(frame)
        self._digest.add_frames(frame)
        if scale is not None:
            self._scales.append(scale)
        if len(self._buffer) == SHARD_FRAMES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        stop = self._written + len(self._buffer)
        self.bold[self._written:stop] = np.stack(self._buffer)
        if self.scale is not None:
            self.scale[self._written:stop] = np.asarray(self._scales[self._written:stop], dtype=np.float32)
        self._written, self._buffer = stop, []

    def commit(self, record: dict) -> dict:
        """Publish the run with ``record`` (plus ``data_sha256``) as its attributes; returns that record.

        When another job published the same run from the same source and parameters meanwhile, its copy
        (identical bytes) is kept and this one dropped."""
        self._flush()
        if self._written != self.bold.shape[0]:
            raise RuntimeError(f"{self.run_id}: wrote {self._written} of {self.bold.shape[0]} frames")
        record = {**record, "data_sha256": self._digest.finish(self._scales)}
        self.group.attrs.update({**record, "complete": True})
        if is_url(self.location):
            fs, root = filesystem(self.location)
            final = f"{root}/runs/{self.run_id}.zarr"
            if fs.exists(final):
                fs.rm(final, recursive=True)
            fs.put(str(self.tmp), final, recursive=True)
            self.abort()
        else:
            self._rename_into_place(record)
        return record

    def _rename_into_place(self, record: dict) -> None:
        final = Path(self.location) / "runs" / f"{self.run_id}.zarr"
        for _ in range(10):  # other jobs may publish or replace the same run in between
            try:
                os.replace(self.tmp, final)  # fails when a non-empty group is there
                return
            except OSError:
                if _same_source(completed_record(self.location, self.run_id), record):
                    self.abort()  # the same bytes, written by another job
                    return
            trash = owned_temporary(final.with_name(f"{final.name}.old"))
            try:  # an outdated or partial earlier version: move it aside, then retry
                os.replace(final, trash)
            except FileNotFoundError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
        raise RuntimeError(f"{final}: could not replace the run (another job keeps replacing it)")

    def abort(self) -> None:
        shutil.rmtree(self.tmp.parent if is_url(self.location) else self.tmp, ignore_errors=True)


def open_run(location: str, run_id: str) -> zarr.Group:
    """The zarr group of one run of a store (nothing read but its metadata)."""
    url = f"{location}/runs/{run_id}.zarr"
    backend = FsspecStore.from_url(url, read_only=True) if is_url(url) else LocalStore(url, read_only=True)
    return zarr.open_group(backend, mode="r")


class FrameReader:
    """Reads frames of one run's ``bold`` as stored, with one ranged read per shard a clip touches.

    A clip's frames are consecutive chunks of one or two shards, written in time order, so each shard's
    part is one contiguous byte range: it is read at once and every frame's chunk is decompressed by the
    codec straight into the output array (measured in ``benchmarks/data.py``: one process reads at about
    four fifths of the codec's own rate, zarr's general read path at a third). Shard indexes are read once per
    run. A layout other than the ones :class:`RunWriter` writes (sharded chunks of one frame, zstd or blosc,
    index at the end) is read through zarr, as is anything the fast path cannot parse.
    """

    MISSING = 2**64 - 1  # an index entry of a chunk never written (all fill value)

    def __init__(self, location: str, run_id: str, group: zarr.Group) -> None:
        self.bold = group["bold"]
        self.fs, root = filesystem(location)
        self.folder = f"{root}/runs/{run_id}.zarr/bold"
        self.shard_frames, self.decoder = self._direct_layout(self.bold)
        self._indexes: dict[int, np.ndarray] = {}

    @staticmethod
    def _direct_layout(bold: zarr.Array) -> tuple[int | None, Zstd | Blosc | None]:
        """Frames per shard and the frames' decoder when ``bold`` has a layout the fast path reads, else None."""
        meta = bold.metadata
        codecs = getattr(meta, "codecs", ())
        if len(codecs) != 1 or type(codecs[0]).__name__ != "ShardingCodec":
            return None, None
        sharding = codecs[0]
        inner = [type(c).__name__ for c in sharding.codecs]
        index = [type(c).__name__ for c in sharding.index_codecs]
        if (len(inner) != 2 or inner[0] != "BytesCodec" or inner[1] not in DECODERS
                or index != ["BytesCodec", "Crc32cCodec"] or sharding.index_location.value != "end"
                or tuple(sharding.chunk_shape) != (1, *bold.shape[1:])
                or getattr(meta.chunk_key_encoding, "separator", None) != "/"):
            return None, None
        return int(bold.shards[0]), DECODERS[inner[1]]

    def shard_path(self, shard: int) -> str:
        return f"{self.folder}/c/{shard}/0/0/0"

    def chunk_index(self, shard: int) -> np.ndarray | None:
        """(frames per shard, 2) byte offset and length of each chunk; None for a shard never written."""
        if shard not in self._indexes:
            size = self.shard_frames * 16 + 4  # uint64 pairs, then the index's CRC32C
            try:
                tail = self.fs.cat_file(self.shard_path(shard), start=-size)
            except FileNotFoundError:
                return None
            self._indexes[shard] = np.frombuffer(tail[:-4], dtype="<u8").reshape(self.shard_frames, 2)
        return self._indexes[shard]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames [start, stop) as stored, (stop - start, X, Y, Z), into ``out`` when given."""
        if out is None:
            out = np.empty((stop - start, *self.bold.shape[1:]), dtype=self.bold.dtype)
        if self.shard_frames is None:
            out[...] = self.bold[start:stop]
            return out
        frame = start
        while frame < stop:
            shard, first = divmod(frame, self.shard_frames)
            last = min(stop, (shard + 1) * self.shard_frames)
            index = self.chunk_index(shard)
            part = out[frame - start:last - start]
            if index is None:
                part[...] = self.bold.metadata.fill_value
            else:
                self._read_shard(shard, index[first:first + last - frame], part)
            frame = last
        return out

    def _read_shard(self, shard: int, entries: np.ndarray, out: np.ndarray) -> None:
        written = entries[:, 0] != self.MISSING
        out[~written] = self.bold.metadata.fill_value
        if not written.any():
            return
        low = int(entries[written, 0].min())
        high = int((entries[written, 0] + entries[written, 1]).max())
        data = memoryview(self.fs.cat_file(self.shard_path(shard), start=low, end=high))
        for k in np.flatnonzero(written):
            offset, length = int(entries[k, 0]) - low, int(entries[k, 1])
            self.decoder.decode(data[offset:offset + length], out=out[k])


def completed_record(location: str | os.PathLike[str], run_id: str) -> dict | None:
    """The record of a run's complete group, or None if missing, partial or unreadable."""
    try:
        attrs = dict(open_run(str(location), run_id).attrs)
    except OPEN_ERRORS:
        return None
    return attrs if attrs.get("complete") is True else None


def run_names(location: str) -> list[str]:
    """The run ids that have a group under ``runs/`` (complete or not; temporaries excluded)."""
    fs, root = filesystem(location)
    if not fs.exists(f"{root}/runs"):
        return []
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{root}/runs", detail=False))
    return sorted(n.removesuffix(".zarr") for n in names if n.endswith(".zarr") and not n.startswith("."))
