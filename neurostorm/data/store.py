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

import json
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from neurostorm.data.files import TMP_MARK, filesystem, is_url, process_alive, put_bytes
from neurostorm.data.grid import Grid
from neurostorm.data.manifest import read_manifest
from neurostorm.data.runs import SHARD_FRAMES, FrameReader, open_run
from neurostorm.errors import InputError
from neurostorm.version import __version__

STORE_FORMAT = "neurostorm-store/2"
READABLE_FORMATS = ("neurostorm-store/1", STORE_FORMAT)  # /1: the same runs, one manifest.parquet, no parts
STALE_HOURS = 24.0
_OWNED = re.compile(rf"{re.escape(TMP_MARK)}(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{{12}})$")


def decode_frames(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Stored frames (T, X, Y, Z) int8 or float16 and their scales (T,) → normalised float32 (T, X, Y, Z)."""
    return values.astype(np.float32) * scale.astype(np.float32)[:, None, None, None]


def data_summary(stores: list[Store]) -> dict:
    """Stores, runs and subjects trained on: the training-data lines of a model card."""
    manifests = [store.manifest for store in stores]
    return {"stores": ", ".join(store.location for store in stores), "runs": sum(len(m) for m in manifests),
            "subjects": sum(int(m["subject"].nunique()) for m in manifests if len(m))}


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
STORE_ENTRIES = ("store.json", "runs", "manifest.parquet", "manifest.d", "manifest.lock", "qc_orientation.png",
                 "report")


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
    read, so a worker that reads runs never loads the manifest. With ``exclude_flagged`` the manifest leaves
    out the runs that ``neurostorm report`` flagged (its ``qc_flags`` column; training's
    ``data.exclude_flagged``).
    """

    def __init__(self, location: str | os.PathLike[str], exclude_flagged: bool = False) -> None:
        self.location = str(location).rstrip("/")
        self.exclude_flagged = exclude_flagged
        info = read_store_info(self.location)
        if info is None:
            raise InputError(self.location, "no store.json: not a neurostorm store")
        self.info = info
        self._runs: dict[str, zarr.Group] = {}
        self._readers: dict[str, tuple[FrameReader, np.ndarray]] = {}

    @cached_property
    def manifest(self) -> pd.DataFrame:
        """One row per run (see :mod:`neurostorm.data.manifest`); without the flagged runs when
        ``exclude_flagged``."""
        manifest = read_manifest(self.location)
        if not self.exclude_flagged:
            return manifest
        if "qc_flags" not in manifest.columns:
            raise InputError(self.location, "data.exclude_flagged: the store has no QC flags yet; run "
                                            f"`neurostorm report {self.location} --out DIR` first")
        flagged = manifest["qc_flags"].fillna("").astype(str) != ""
        if flagged.any():
            warnings.warn(f"{self.location}: {int(flagged.sum())} of {len(manifest)} runs left out as flagged by "
                          f"the quality report (data.exclude_flagged): {', '.join(manifest.run_id[flagged][:5])}"
                          f"{' …' if flagged.sum() > 5 else ''}", stacklevel=2)
        return manifest[~flagged].reset_index(drop=True)

    def preprocessing(self) -> dict:
        """What weights trained on this store expect: its grid and the preprocessing parameters most of its
        runs were written with (saved with the weights; ``preprocess --like MODEL`` reuses them)."""
        params = self.manifest["params"].mode() if len(self.manifest) else []
        return {**self.info, "params": json.loads(params.iloc[0]) if len(params) else {}}

    @property
    def grid(self) -> Grid:
        """The grid every run of the store lies on."""
        info = self.info["grid"]
        return Grid(info["name"], tuple(info["shape"]), tuple(map(tuple, info["affine"])))

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

    def stored_dtype(self, run_id: str) -> np.dtype:
        """The dtype a run's frames are stored in (int8 or float16)."""
        return self._reader(run_id)[0].bold.dtype

    def read_stored(self, run_id: str, start: int, length: int,
                    out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Frames [start, start + length) of a run as stored: values (length, X, Y, Z), int8 or float16 (into
        ``out`` when given), and the per-frame scale (length,) float32 (ones for float16), so that value =
        stored × scale. Loaders move these bytes, a quarter of float32's for int8; :func:`decode_frames` (or
        on a device :func:`neurostorm.data.datasets.decoded`) makes the float32 clip."""
        group = self.run(run_id)
        reader, scales = self._reader(run_id)
        stop = start + length
        if start < 0 or stop > len(scales):
            raise IndexError(f"{run_id}: frames [{start}, {stop}) outside 0..{len(scales)}")
        try:
            values = reader.read(start, stop, out)
        except Exception as err:  # the codec's own error types differ (zstd, blosc, a truncated shard)
            frame = self._unreadable_frame(group, start, stop)
            raise InputError(f"{self.location}/runs/{run_id}.zarr",
                             f"frame {frame} cannot be read ({type(err).__name__}: {err}); `neurostorm store "
                             "check --data` lists the damaged runs, `preprocess` again rewrites them") from None
        return values, scales[start:stop]

    def _reader(self, run_id: str) -> tuple[FrameReader, np.ndarray]:
        """The frame reader of a run and all its per-frame scales (T,) float32, ones for float16 (read once)."""
        if run_id not in self._readers:
            group = self.run(run_id)
            scales = np.asarray(group["scale"][...], dtype=np.float32) if "scale" in group \
                else np.ones(group["bold"].shape[0], dtype=np.float32)
            self._readers[run_id] = (FrameReader(self.location, run_id, group), scales)
        return self._readers[run_id]

    @staticmethod
    def _unreadable_frame(group: zarr.Group, start: int, stop: int) -> int:
        """The first frame in [start, stop) whose chunk fails to decode (``start`` when each alone reads)."""
        for frame in range(start, stop):
            try:
                group["bold"][frame]
            except Exception:
                return frame
        return start

    def read_clip(self, run_id: str, start: int, length: int) -> np.ndarray:
        """Frames [start, start + length) of a run as normalised float32, shape (length, X, Y, Z)."""
        return decode_frames(*self.read_stored(run_id, start, length))

    def iter_frames(self, run_id: str, block: int = SHARD_FRAMES) -> Iterator[np.ndarray]:
        """All frames of a run, ``block`` at a time, each (≤block, X, Y, Z) float32."""
        total = self.n_frames(run_id)
        for start in range(0, total, block):
            yield self.read_clip(run_id, start, min(block, total - start))

    def read_mask(self, run_id: str) -> np.ndarray:
        return np.asarray(self.run(run_id)["mask"][...], dtype=bool)
