"""The manifest of a store: one row per run, written by many jobs at once without losing a row.

A job that writes a run writes that run's row as its own small JSON file, ``manifest.d/<run_id>.<token>.json``,
once the run's data is complete — in the process that wrote the run, so a job killed later loses nothing.
Readers take ``manifest.parquet`` and every part, and keep the newest row of each run (``written_at``).
:func:`merge_manifest` folds the parts into ``manifest.parquet`` under a lock file (``manifest.lock``) and
deletes exactly the parts it folded, so a part written meanwhile stays; at the end of every local job a
merge is tried without waiting. Runs whose data is complete but whose part is missing (a job killed
between the two) are adopted by the next merge from the record their group carries.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

from neurostorm.data.files import filesystem, is_url, process_alive, put_bytes
from neurostorm.data.runs import completed_record, run_names

PARTS = "manifest.d"
LOCK = "manifest.lock"
LOCK_STALE_S = 3600.0  # a merge takes seconds; a lock this old was left by a killed merge
_LIST_COLUMNS = ("source_shape", "source_voxel_mm")  # lists in the record, JSON text in the table


def manifest_row(record: dict, labels: dict) -> dict:
    """A run's manifest row: its record (lists as JSON text), its subject's labels, when it was written."""
    row = {**labels, **{k: v for k, v in record.items() if k != "complete"}}
    for column in _LIST_COLUMNS:
        if not isinstance(row.get(column), str):
            row[column] = json.dumps(row[column])
    return stamped(row)


def stamped(row: dict) -> dict:
    """``row`` with ``written_at`` now: readers keep the newest row of a run."""
    return {**row, "written_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}


def plain_value(value: object) -> object:
    """A JSON-ready value: numpy scalars as Python numbers, NaN as null."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and value != value else value


def write_part(location: str, row: dict) -> None:
    """Publish one run's manifest row as its own part (JSON: a thousand parts read in a tenth of a second)."""
    payload = json.dumps({k: plain_value(v) for k, v in row.items()}).encode()
    put_bytes(location, f"{PARTS}/{row['run_id']}.{uuid.uuid4().hex[:12]}.json", payload)


def _read_table(fs, path: str) -> pd.DataFrame:
    with fs.open(path, "rb") as handle:
        return pd.read_parquet(handle)


def _read_part(fs, path: str) -> dict:
    with fs.open(path, "r") as handle:
        return json.load(handle)


def newest_rows(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per run, the newest by ``written_at``, ordered by run id."""
    tables = [t for t in tables if not t.empty]
    if not tables:
        return pd.DataFrame(columns=["run_id", "subject", "n_frames", "written_at"])
    table = pd.concat(tables, ignore_index=True)
    if "written_at" not in table.columns:  # a manifest written before parts existed
        table["written_at"] = ""
    table["written_at"] = table["written_at"].fillna("")
    table = table.sort_values("written_at", kind="stable").drop_duplicates("run_id", keep="last")
    return table.sort_values("run_id", kind="stable").reset_index(drop=True)


def _snapshot(location: str) -> tuple[pd.DataFrame, dict[str, set[tuple[str, str]]]]:
    """The manifest (compacted table and parts), and the (run id, written_at) row of each part read."""
    fs, root = filesystem(location)
    for _ in range(20):
        paths = sorted(fs.glob(f"{root}/{PARTS}/*.json"))
        try:
            tables = [_read_table(fs, f"{root}/manifest.parquet")] if fs.exists(f"{root}/manifest.parquet") else []
            parts = {path: _read_part(fs, path) for path in paths}
        except FileNotFoundError:  # a merge folded a listed part meanwhile: its row is in the new table
            time.sleep(0.05)
            continue
        table = newest_rows([*tables, pd.DataFrame(list(parts.values()))])
        return table, {path: {(row["run_id"], row["written_at"])} for path, row in parts.items()}
    raise RuntimeError(f"{location}: the manifest kept changing while it was read")


def read_manifest(location: str) -> pd.DataFrame:
    """Every run of the store, one row each (lists the parts folder, never the runs)."""
    return _snapshot(location)[0]


def _lock_is_stale(fs, path: str) -> bool:
    try:
        with fs.open(path, "r") as handle:
            holder = json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return False  # being written or just released: try again
    if time.time() - float(holder.get("time", 0)) > LOCK_STALE_S:
        return True
    return holder.get("host") == socket.gethostname() and not process_alive(int(holder["pid"]))


@contextmanager
def manifest_lock(location: str, wait_s: float) -> Iterator[bool]:
    """Hold ``manifest.lock`` (exclusive create) while the block runs; yields False when another merge
    holds it for longer than ``wait_s``. A lock left by a killed merge is taken over."""
    fs, root = filesystem(location)
    path = f"{root}/{LOCK}"
    holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}).encode()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with fs.open(path, "xb") as handle:
                handle.write(holder)
            break
        except FileExistsError:
            if _lock_is_stale(fs, path):  # moved aside first: of two merges that find it stale, one takes it
                aside = f"{path}.stale-{uuid.uuid4().hex[:12]}"
                try:
                    fs.mv(path, aside)
                except FileNotFoundError:
                    continue
                fs.rm(aside)
                continue
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(0.2)
    try:
        yield True
    finally:
        fs.rm(path)


@dataclass(frozen=True)
class MergeResult:
    runs: int  # rows of manifest.parquet after the merge
    parts: int  # parts folded (and deleted)
    adopted: list[str]  # complete runs that had no row


def _orphan_rows(location: str, table: pd.DataFrame) -> list[dict]:
    """Rows for complete runs without one, from their groups' records and their subjects' labels."""
    known = set(table["run_id"])
    rows = []
    for run_id in run_names(location):
        if run_id in known:
            continue
        record = completed_record(location, run_id)
        if record is None:
            continue
        same_subject = table[table["subject"].astype(str) == str(record["subject"])]
        labels = {k: v for k, v in same_subject.iloc[0].items() if k not in record} if len(same_subject) else {}
        rows.append({**manifest_row(record, labels), "written_at": ""})  # any part written later wins
    return rows


def merge_manifest(location: str, wait_s: float = 60.0) -> MergeResult | None:
    """Fold the parts (and complete runs without a row) into ``manifest.parquet``; None when another merge
    held the lock for ``wait_s`` seconds."""
    with manifest_lock(location, wait_s) as held:
        if not held:
            return None
        table, parts = _snapshot(location)
        orphans = _orphan_rows(location, table)
        table = newest_rows([table, pd.DataFrame(orphans)])
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        put_bytes(location, "manifest.parquet", buffer.getvalue())
        fs, root = filesystem(location)
        current = newest_rows([_read_table(fs, f"{root}/manifest.parquet")])  # read back: what readers now see
        newest = dict(zip(current["run_id"], current["written_at"], strict=True))
        done = [path for path, keys in parts.items() if _folded(keys, newest)]
        for path in done:
            fs.rm(path)
        return MergeResult(len(table), len(done), sorted(r["run_id"] for r in orphans))


def _folded(keys: set[tuple[str, str]], newest: dict[str, str]) -> bool:
    """Whether the manifest (``newest``: run id → written_at) holds every row of a part, or a newer one."""
    return all(run_id in newest and newest[run_id] >= written for run_id, written in keys)


def merge_if_idle(location: str) -> MergeResult | None:
    """The end-of-job merge of a local store: skipped when another merge runs (its parts stay readable)."""
    return None if is_url(location) else merge_manifest(location, wait_s=0.0)
