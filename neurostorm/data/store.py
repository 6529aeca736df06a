"""The preprocessed store: one zarr v3 group per run, a Parquet manifest, read locally or through fsspec.

Layout of a store ``STORE/``::

    store.json                  format, target grid, package version
    manifest.parquet            one row per run (see ``neurostorm.data.preprocess``)
    runs/<run_id>.zarr/         zarr v3 group
        bold   (T, X, Y, Z)     int8 (× per-frame ``scale``) or float16, normalised values;
                                chunks of 1 frame inside shards of 20 frames, zstd-compressed
        scale  (T,)             float32, only for int8: value = bold * scale
        mask   (X, Y, Z)        bool brain mask
        attrs                   the run's manifest record, ``complete: true`` written last

A clip of frames [t, t + L) reads only the chunks of those frames, so the store can live in object storage
(``s3://…``, ``gs://…``) and be read through fsspec without fetching whole runs. Runs are written under a
temporary name and renamed when complete, so a killed job never leaves a partial run behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from zarr.storage import FsspecStore, LocalStore

from neurostorm.errors import InputError

STORE_FORMAT = "neurostorm-store/1"
SHARD_FRAMES = 20
TMP_MARK = ".tmp-"


def _is_url(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def write_parquet_atomic(path: Path, table: pd.DataFrame) -> None:
    tmp = path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex}")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex}")
    with open(tmp, "wb") as handle:  # a file handle, so numpy does not append ".npz" to the temporary name
        np.savez(handle, **arrays)
    os.replace(tmp, path)


class RunWriter:
    """Write one run's frames to ``runs/<run_id>.zarr`` atomically.

    Frames are appended in time order with :meth:`append`; :meth:`commit` writes the record, marks the
    group complete and renames it into place. Without ``commit`` nothing appears under the final name.
    """

    def __init__(self, root: Path, run_id: str, n_frames: int, grid_shape: tuple[int, int, int],
                 dtype: str, mask: np.ndarray) -> None:
        self.final = root / "runs" / f"{run_id}.zarr"
        self.tmp = root / "runs" / f".{run_id}.zarr{TMP_MARK}{uuid.uuid4().hex}"
        self.group = zarr.open_group(LocalStore(self.tmp), mode="w")
        shard = (min(SHARD_FRAMES, n_frames), *grid_shape)
        self.bold = self.group.create_array("bold", shape=(n_frames, *grid_shape), dtype=dtype,
                                            chunks=(1, *grid_shape), shards=shard)
        self.scale = self.group.create_array("scale", shape=(n_frames,), dtype="float32") \
            if dtype == "int8" else None
        self.group.create_array("mask", data=np.asarray(mask, dtype=bool))
        self._buffer: list[np.ndarray] = []
        self._scales: list[float] = []
        self._written = 0

    def append(self, frame: np.ndarray, scale: float | None = None) -> None:
        """Add the next frame (X, Y, Z) in storage dtype, with its int8 scale."""
        self._buffer.append(frame)
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
            self.scale[self._written:stop] = np.asarray(self._scales, dtype=np.float32)
        self._written, self._buffer, self._scales = stop, [], []

    def commit(self, record: dict) -> None:
        self._flush()
        if self._written != self.bold.shape[0]:
            raise RuntimeError(f"{self.final}: wrote {self._written} of {self.bold.shape[0]} frames")
        self.group.attrs.update({**record, "complete": True})
        if self.final.exists():  # an outdated or incomplete earlier version: swap, then delete
            trash = self.final.with_name(f".{self.final.name}{TMP_MARK}old-{uuid.uuid4().hex}")
            os.replace(self.final, trash)
            os.replace(self.tmp, self.final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def completed_record(path: Path) -> dict | None:
    """The record of a complete run group at ``path``, or None if missing, partial or unreadable."""
    if not (path / "zarr.json").exists():
        return None
    try:
        attrs = dict(zarr.open_group(LocalStore(path, read_only=True), mode="r").attrs)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return attrs if attrs.get("complete") is True else None


def remove_stale_temporaries(root: Path) -> int:
    """Delete what killed jobs left behind (temporary run groups and files); returns how many."""
    stale = [p for p in (root / "runs").glob(f".*{TMP_MARK}*")] + list(root.glob(f"*{TMP_MARK}*"))
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return len(stale)


class Store:
    """Read access to a preprocessed store, on local disk or at any fsspec URL.

    >>> store = Store("out/store")               # or Store("s3://bucket/store")
    >>> store.manifest.run_id.tolist()
    >>> clip = store.read_clip(run_id, start=0, length=20)   # (20, 96, 96, 96) float32
    """

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.location = str(location).rstrip("/")
        self.info = self._read_info()
        try:
            self.manifest = pd.read_parquet(f"{self.location}/manifest.parquet")
        except FileNotFoundError:
            raise InputError(self.location, "no manifest.parquet: not a neurostorm store") from None
        self._runs: dict[str, zarr.Group] = {}

    def _read_info(self) -> dict:
        path = f"{self.location}/store.json"
        try:
            if _is_url(self.location):
                import fsspec

                with fsspec.open(path, "r") as handle:
                    info = json.load(handle)
            else:
                info = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(self.location, "no store.json: not a neurostorm store") from None
        if info.get("format") != STORE_FORMAT:
            raise InputError(self.location, f"unknown store format {info.get('format')!r}")
        return info

    @property
    def grid_affine(self) -> np.ndarray:
        return np.asarray(self.info["grid"]["affine"], dtype=np.float64)

    def run(self, run_id: str) -> zarr.Group:
        """The zarr group of one run (opened lazily; no data is read)."""
        if run_id not in self._runs:
            url = f"{self.location}/runs/{run_id}.zarr"
            backend = FsspecStore.from_url(url, read_only=True) if _is_url(url) \
                else LocalStore(url, read_only=True)
            self._runs[run_id] = zarr.open_group(backend, mode="r")
        return self._runs[run_id]

    def n_frames(self, run_id: str) -> int:
        return int(self.run(run_id)["bold"].shape[0])

    def read_clip(self, run_id: str, start: int, length: int) -> np.ndarray:
        """Frames [start, start + length) of a run as normalised float32, shape (length, X, Y, Z)."""
        group = self.run(run_id)
        stop = start + length
        if start < 0 or stop > group["bold"].shape[0]:
            raise IndexError(f"{run_id}: frames [{start}, {stop}) outside 0..{group['bold'].shape[0]}")
        frames = np.asarray(group["bold"][start:stop], dtype=np.float32)
        if "scale" in group:
            frames *= np.asarray(group["scale"][start:stop], dtype=np.float32)[:, None, None, None]
        return frames

    def iter_frames(self, run_id: str, block: int = SHARD_FRAMES) -> Iterator[np.ndarray]:
        """All frames of a run, ``block`` at a time, each (≤block, X, Y, Z) float32."""
        total = self.n_frames(run_id)
        for start in range(0, total, block):
            yield self.read_clip(run_id, start, min(block, total - start))

    def read_mask(self, run_id: str) -> np.ndarray:
        return np.asarray(self.run(run_id)["mask"][...], dtype=bool)
