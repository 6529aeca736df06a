"""``neurostorm store check``: every manifest row has its run, complete and as recorded.

Per row: the run group exists and is marked complete; its record (source checksum, parameters, frames)
equals the row; ``bold`` has shape (frames, *grid) in the recorded storage type, ``scale`` one value per
frame, ``mask`` the grid's shape; every shard of ``bold`` is on disk. With ``data=True`` every stored value
is read back and its SHA-256 compared with the ``data_sha256`` written with the run. Beside problems it
reports runs without a row, parts waiting for a merge and temporaries (live jobs' or stale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from neurostorm.data.files import filesystem, is_url
from neurostorm.data.manifest import PARTS
from neurostorm.data.runs import OPEN_ERRORS, SHARD_FRAMES, DataDigest, run_names
from neurostorm.data.store import Store, find_temporaries

_RECORDED = ("source_sha256", "params", "n_frames", "storage")


@dataclass
class StoreCheck:
    runs: int = 0
    problems: list[str] = field(default_factory=list)  # each "run_id: what is wrong"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _data_sha256(store: Store, run_id: str) -> str:
    group = store.run(run_id)
    digest = DataDigest()
    for start in range(0, group["bold"].shape[0], SHARD_FRAMES):
        digest.add_frames(group["bold"][start:start + SHARD_FRAMES])
    return digest.finish(group["scale"][...] if "scale" in group else [])


def check_run(store: Store, row: dict, grid_shape: tuple[int, ...], data: bool) -> list[str]:
    run_id = row["run_id"]
    try:
        group = store.run(run_id)
    except OPEN_ERRORS as err:
        return [f"run group missing or unreadable ({type(err).__name__})"]
    attrs = dict(group.attrs)
    if attrs.get("complete") is not True:
        return ["run group not marked complete"]
    found = [f"{key} {attrs.get(key)!r} in the run, {row.get(key)!r} in the manifest"
             for key in _RECORDED if str(attrs.get(key)) != str(row.get(key))]
    n_frames = int(row["n_frames"])
    expected = {"bold": (n_frames, *grid_shape), "mask": grid_shape, **({"scale": (n_frames,)}
                                                                       if row["storage"] == "int8" else {})}
    for name, shape in expected.items():
        if name not in group:
            found.append(f"no {name} array")
        elif tuple(group[name].shape) != shape:
            found.append(f"{name} shape {tuple(group[name].shape)}, expected {shape}")
    fs, root = filesystem(store.location)
    shards = len(fs.find(f"{root}/runs/{run_id}.zarr/bold/c"))
    if shards != math.ceil(n_frames / SHARD_FRAMES):
        found.append(f"{shards} of {math.ceil(n_frames / SHARD_FRAMES)} bold shards on disk")
    if data and not found:
        if "data_sha256" not in attrs:
            found.append("no data_sha256 recorded (written by an earlier version): cannot verify values")
        else:
            try:
                if _data_sha256(store, run_id) != attrs["data_sha256"]:
                    found.append("stored values differ from their recorded data_sha256")
            except (OSError, ValueError, RuntimeError) as err:  # a chunk that no longer decodes
                found.append(f"stored values cannot be read ({type(err).__name__}: {err})")
    return found


def check_store(location: str, data: bool = False) -> StoreCheck:
    """Check every run of the store at ``location`` against its manifest row (see the module notes)."""
    store = Store(location)
    grid_shape = tuple(store.info["grid"]["shape"])
    result = StoreCheck(runs=len(store.manifest))
    for row in store.manifest.to_dict("records"):
        result.problems += [f"{row['run_id']}: {problem}" for problem in check_run(store, row, grid_shape, data)]
    fs, root = filesystem(location)
    listed = set(store.manifest["run_id"])
    rowless = [run_id for run_id in run_names(location) if run_id not in listed]
    if rowless:
        result.notes.append(f"{len(rowless)} run(s) without a manifest row (a merge adopts complete ones): "
                            + ", ".join(rowless[:10]) + (" …" if len(rowless) > 10 else ""))
    parts = fs.glob(f"{root}/{PARTS}/*.json")
    if parts:
        result.notes.append(f"{len(parts)} manifest part(s) not yet merged (readers include them)")
    if not is_url(location):
        temporaries = find_temporaries(Path(location))
        stale = [t for t in temporaries if t.stale()]
        if temporaries:
            result.notes.append(f"{len(temporaries)} temporaries: {len(temporaries) - len(stale)} of live jobs, "
                                f"{len(stale)} stale (removed by 'neurostorm store compact')")
    return result
