"""Reading clips from a store: locally and through fsspec, touching only the clip's chunks."""

import fsspec
import numpy as np
import pandas as pd
import pytest

from neurostorm.data.files import write_csv_atomic
from neurostorm.data.store import Store


def test_read_clip_shape_and_bounds(store):
    reader = Store(store)
    run_id = reader.manifest["run_id"][0]
    clip = reader.read_clip(run_id, 5, 20)
    assert clip.shape == (20, 96, 96, 96) and clip.dtype == np.float32
    with pytest.raises(IndexError):
        reader.read_clip(run_id, reader.n_frames(run_id) - 10, 20)


def test_clip_through_fsspec_reads_only_its_shard(store):
    """Copy the store into fsspec's in-memory filesystem, delete every shard but frames 20–39, read them."""
    memory = fsspec.filesystem("memory")
    memory.put(str(store), "/remote-store", recursive=True)
    local = Store(store)
    run_id = local.manifest["run_id"][0]
    shards = sorted(memory.ls(f"/remote-store/runs/{run_id}.zarr/bold/c", detail=False))
    assert len(shards) == 3  # 58 frames in shards of 20
    for shard in shards:
        if not shard.endswith("/1"):
            memory.rm(shard, recursive=True)
    remote = Store("memory://remote-store")
    np.testing.assert_array_equal(remote.read_clip(run_id, 20, 20), local.read_clip(run_id, 20, 20))
    # the deleted shards are really gone: zarr reads them as its fill value, not the data
    assert not np.array_equal(remote.read_clip(run_id, 0, 20), local.read_clip(run_id, 0, 20))
    memory.rm("/remote-store", recursive=True)


def test_a_results_table_rewritten_in_vain_keeps_the_one_before(tmp_path, monkeypatch):
    """A predictions or comparison table is replaced whole: a write that fails half-way (a full disk, a
    killed process) leaves the previous file as it was and no temporary beside it."""
    path = tmp_path / "predictions.csv"
    write_csv_atomic(path, pd.DataFrame({"subject": ["sub-01"], "output": [0.5]}))
    before = path.read_text()

    def half_written(self, target, **options):
        with open(target, "w") as handle:
            handle.write("subject,out")
        raise OSError("No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_written)
    with pytest.raises(OSError, match="No space left"):
        write_csv_atomic(path, pd.DataFrame({"subject": ["sub-02"], "output": [0.7]}))
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
