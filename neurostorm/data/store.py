"""The preprocessed store: one zarr v3 group per run and a manifest, on local disk or at any fsspec URL.

Layout of a store ``STORE/``::

    store.json                  format, target grid, package version
    manifest.parquet            one row per run, folded from the parts (``neurostorm store merge``)
    manifest.d/*.json           one row per run written since the last merge (see ``manifest.py``)
    runs/<run_id>.zarr/         zarr v3 group
        bold   (T, X, Y, Z)     int8 (× per-frame ``scale``) or float16, normalised values;
                                chunks of 1 frame inside shards of 20 frames, zstd-compressed
        scale  (T,)             float32, only for int8: value = bold * scale
        mask   (X, Y, Z)        bool brain mask
        attrs                   the run's record (``data_sha256`` of the stored values), ``complete: true`` last

A clip of frames [t, t + L) reads only the chunks of those frames, so the store can live in object storage
(``s3://…``, ``gs://…``) and be read through fsspec without fetching whole runs.

Many jobs, on many machines, may write into one store at once. On a file system a run is written under a
temporary name that names its writer (``.<run_id>.zarr.tmp-<host>-<pid>-<token>``) and renamed into place
when complete; a job removes another's temporary only when that writer ran on the same machine and is gone,
or when nothing in it changed for ``STALE_HOURS`` — so a live job's work is never removed. At a URL a run is
written locally, uploaded, and only then given its manifest part, so a reader never sees a run without data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import zarr
from zarr.storage import FsspecStore, LocalStore

from neurostorm import __version__
from neurostorm.errors import InputError

STORE_FORMAT = "neurostorm-store/2"
READABLE_FORMATS = ("neurostorm-store/1", STORE_FORMAT)  # /1: the same runs, one manifest.parquet, no parts
SHARD_FRAMES = 20
TMP_MARK = ".tmp-"
STALE_HOURS = 24.0
OPEN_ERRORS = (OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError)  # a run group missing or broken
_OWNED = re.compile(rf"{re.escape(TMP_MARK)}(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{{12}})$")


def is_url(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


def filesystem(location: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of a store location (a path or URL) and the path inside it."""
    fs, root = fsspec.core.url_to_fs(str(location))
    return fs, root.rstrip("/")


def owned_temporary(path: Path) -> Path:
    """A unique hidden sibling of ``path`` naming its writer: ``.NAME.tmp-HOST-PID-TOKEN``."""
    return path.with_name(f".{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block succeeds and is
    removed when it fails, so readers see the old file or the new one, never half of one."""
    tmp = owned_temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def data_summary(stores: list[Store]) -> dict:
    """Stores, runs and subjects trained on: the training-data lines of a model card."""
    manifests = [store.manifest for store in stores]
    return {"stores": ", ".join(store.location for store in stores), "runs": sum(len(m) for m in manifests),
            "subjects": sum(int(m["subject"].nunique()) for m in manifests if len(m))}


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


def write_json_atomic(path: Path, payload: dict) -> None:
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))


def write_parquet_atomic(path: Path, table: pd.DataFrame) -> None:
    with replaced_atomically(path) as tmp:
        table.to_parquet(tmp, index=False)


def write_csv_atomic(path: Path, table: pd.DataFrame, **options) -> None:
    """``table.to_csv(path, index=False, **options)``, whole or not at all (``sep="\t"`` for a .tsv)."""
    with replaced_atomically(path) as tmp:
        table.to_csv(tmp, index=False, **options)


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with replaced_atomically(path) as tmp, open(tmp, "wb") as handle:  # a handle: numpy adds no ".npz"
        np.savez(handle, **arrays)


def put_bytes(location: str, relative: str, payload: bytes) -> None:
    """Write ``payload`` to ``location/relative`` whole: renamed into place locally, one upload at a URL."""
    if is_url(location):
        fs, root = filesystem(location)
        target = f"{root}/{relative}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)  # a file system needs the folder; buckets ignore it
        fs.pipe_file(target, payload)
        return
    path = Path(location) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        tmp.write_bytes(payload)


def run_names(location: str) -> list[str]:
    """The run ids that have a group under ``runs/`` (complete or not; temporaries excluded)."""
    fs, root = filesystem(location)
    if not fs.exists(f"{root}/runs"):
        return []
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{root}/runs", detail=False))
    return sorted(n.removesuffix(".zarr") for n in names if n.endswith(".zarr") and not n.startswith("."))


def read_store_info(location: str) -> dict | None:
    """``store.json`` of a store, or None when there is none; a format this version cannot read is refused."""
    fs, root = filesystem(location)
    try:
        with fs.open(f"{root}/store.json", "r") as handle:
            info = json.load(handle)
    except FileNotFoundError:
        return None
    if info.get("format") not in READABLE_FORMATS:
        raise InputError(location, f"store format {info.get('format')!r} (written by neurostorm "
                                   f"{info.get('neurostorm_version', '?')}); neurostorm {__version__} reads "
                                   f"{', '.join(READABLE_FORMATS)}")
    return info


# what a store folder holds besides temporaries (dot-names): a folder with anything else is not a store
STORE_ENTRIES = ("store.json", "runs", "manifest.parquet", "manifest.d", "manifest.lock", "qc_orientation.png")


def open_store_for_writing(location: str, grid: dict) -> None:
    """Create the store at ``location`` or check an existing one: same grid, a format this version writes.
    A ``/1`` store is upgraded in place (its runs and manifest stay valid)."""
    if not is_url(location):
        folder = Path(location)
        if folder.exists() and not folder.is_dir():
            raise InputError(location, "is a file: give --out a new folder or an existing store")
        foreign = [p.name for p in folder.iterdir() if p.name not in STORE_ENTRIES and not p.name.startswith(".")] \
            if folder.is_dir() and not (folder / "store.json").exists() else []
        if foreign:
            raise InputError(location, f"is a folder of other files ({', '.join(sorted(foreign)[:3])}"
                                       f"{', …' if len(foreign) > 3 else ''}), not a "
                                       "store: give --out a new or empty folder, or an existing store to add runs to")
    info = read_store_info(location)
    if info is not None and info["grid"]["name"] != grid["name"]:
        raise InputError(location, f"store grid {info['grid']['name']} differs from {grid['name']}")
    if info is None or info["format"] != STORE_FORMAT:
        payload = {"format": STORE_FORMAT, "grid": grid, "neurostorm_version": __version__}
        put_bytes(location, "store.json", json.dumps(payload, indent=2).encode())
    if not is_url(location):
        (Path(location) / "runs").mkdir(parents=True, exist_ok=True)


def _same_source(record: dict | None, other: dict) -> bool:
    return record is not None and all(record.get(k) == other[k] for k in ("source_sha256", "params"))


class RunWriter:
    """Write one run's frames to ``runs/<run_id>.zarr`` of a store, atomically.

    Frames are appended in time order with :meth:`append`; :meth:`commit` writes the record, marks the
    group complete and publishes it. Without ``commit`` nothing appears under the final name.
    """

    def __init__(self, location: str, run_id: str, n_frames: int, grid_shape: tuple[int, int, int],
                 dtype: str, mask: np.ndarray) -> None:
        self.location, self.run_id = location, run_id
        if is_url(location):  # staged on local disk, uploaded by commit
            self.tmp = Path(tempfile.mkdtemp(prefix="neurostorm-")) / f"{run_id}.zarr"
        else:
            self.tmp = owned_temporary(Path(location) / "runs" / f"{run_id}.zarr")
        try:  # stopped here (a signal), the temporary goes with it
            self.group = zarr.open_group(LocalStore(self.tmp), mode="w")
            shard = (min(SHARD_FRAMES, n_frames), *grid_shape)
            self.bold = self.group.create_array("bold", shape=(n_frames, *grid_shape), dtype=dtype,
                                                chunks=(1, *grid_shape), shards=shard)
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


def completed_record(location: str | os.PathLike[str], run_id: str) -> dict | None:
    """The record of a run's complete group, or None if missing, partial or unreadable."""
    try:
        attrs = dict(open_run(str(location), run_id).attrs)
    except OPEN_ERRORS:
        return None
    return attrs if attrs.get("complete") is True else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:  # Linux: the state follows the parenthesised name
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Temporary:
    """What a writer left under a temporary name: its owner (when the name says) and how long it is idle."""

    path: Path
    host: str | None
    pid: int | None
    idle_hours: float

    @property
    def owner_gone(self) -> bool:
        return self.host == socket.gethostname() and self.pid is not None and not process_alive(self.pid)

    def stale(self, max_idle_hours: float = STALE_HOURS) -> bool:
        return self.owner_gone or self.idle_hours > max_idle_hours


def _idle_hours(path: Path) -> float:
    """Hours since anything in ``path`` (a file or a folder tree) last changed."""
    times = [path.stat().st_mtime] + ([p.stat().st_mtime for p in path.rglob("*")] if path.is_dir() else [])
    return (time.time() - max(times)) / 3600.0


def find_temporaries(root: Path) -> list[Temporary]:
    """Temporaries in a local store (its top folder, ``runs/`` and ``manifest.d/``)."""
    found = []
    for folder in (root, root / "runs", root / "manifest.d"):
        for path in folder.glob(f"*{TMP_MARK}*") if folder.is_dir() else ():
            match = _OWNED.search(path.name)
            try:
                idle = _idle_hours(path)
            except FileNotFoundError:  # published or removed by its writer meanwhile
                continue
            found.append(Temporary(path, match["host"] if match else None,
                                   int(match["pid"]) if match else None, idle))
    return found


def remove_stale_temporaries(root: Path, max_idle_hours: float = STALE_HOURS) -> tuple[int, int]:
    """Delete what finished or killed jobs left behind; returns (removed, kept as another job's live work)."""
    removed = kept = 0
    for temporary in find_temporaries(root):
        if not temporary.stale(max_idle_hours):
            kept += 1
            continue
        shutil.rmtree(temporary.path, ignore_errors=True) if temporary.path.is_dir() \
            else temporary.path.unlink(missing_ok=True)
        removed += 1
    return removed, kept


class Store:
    """Read access to a preprocessed store, on local disk or at any fsspec URL.

    >>> store = Store("out/store")               # or Store("s3://bucket/store")
    >>> store.manifest.run_id.tolist()
    >>> clip = store.read_clip(run_id, start=0, length=20)   # (20, 96, 96, 96) float32

    Opening reads ``store.json``; the manifest is read on first use of :attr:`manifest`, a run on its first
    read, so a worker that reads runs never loads the manifest.
    """

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.location = str(location).rstrip("/")
        info = read_store_info(self.location)
        if info is None:
            raise InputError(self.location, "no store.json: not a neurostorm store")
        self.info = info
        self._runs: dict[str, zarr.Group] = {}

    @cached_property
    def manifest(self) -> pd.DataFrame:
        """One row per run (see :mod:`neurostorm.data.manifest`)."""
        from neurostorm.data.manifest import read_manifest

        return read_manifest(self.location)

    def preprocessing(self) -> dict:
        """What weights trained on this store expect: its grid and the preprocessing parameters most of its
        runs were written with (saved with the weights; ``preprocess --like MODEL`` reuses them)."""
        params = self.manifest["params"].mode() if len(self.manifest) else []
        return {**self.info, "params": json.loads(params.iloc[0]) if len(params) else {}}

    @property
    def grid_affine(self) -> np.ndarray:
        return np.asarray(self.info["grid"]["affine"], dtype=np.float64)

    def run(self, run_id: str) -> zarr.Group:
        """The zarr group of one run (opened lazily; no data is read)."""
        if run_id not in self._runs:
            self._runs[run_id] = open_run(self.location, run_id)
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
