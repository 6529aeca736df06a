"""Files written whole, on local disk or at any fsspec URL.

A file is written under a hidden temporary name that names its writer (``.NAME.tmp-HOST-PID-TOKEN``) and
renamed over the final name when complete, so a reader sees the old file or the new one, never half of one;
a temporary whose writer ran on this machine and is gone can be told apart from a live writer's
(:func:`process_alive`).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd

TMP_MARK = ".tmp-"


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
