"""Cohorts at scale: participant selection and shards, many writers into one store, the manifest's parts,
store check / merge, Dask as the engine, and stores at fsspec URLs."""

import os
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import zarr

from neurostorm.cli import main
from neurostorm.data.files import owned_temporary
from neurostorm.data.ingest import discover, in_shard, parse_shard, select_runs
from neurostorm.data.integrity import check_store
from neurostorm.data.manifest import PARTS, merge_manifest, read_manifest
from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.roi import extract_rois
from neurostorm.data.store import STALE_HOURS, Store, remove_stale_temporaries
from neurostorm.errors import InputError

from .test_bad_input import kill_job

GRID = "mni152-fsl-4mm-48"  # what is checked here holds on every grid; the 4 mm one is quicker to write
COMMAND = [sys.executable, "-m", "neurostorm.cli", "preprocess", "--quiet", "--no-report", "--grid", GRID]
BOOKKEEPING = ["written_at"]  # the one manifest column that differs between two writes of the same run


def run_files(store: Path) -> dict[str, bytes]:
    """Every file of every run, by path relative to the store."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "runs").rglob("*")) if p.is_file()}


def same_store(store: Path, reference: Path) -> None:
    """Byte for byte the same runs and the same manifest rows as ``reference``."""
    assert not list((store / "runs").glob(".*")), "temporaries left"
    assert run_files(store) == run_files(reference)
    mine, theirs = (Store(s).manifest.drop(columns=BOOKKEEPING) for s in (store, reference))
    pd.testing.assert_frame_equal(mine, theirs)


def test_participant_session_task_selection_and_errors(cohort):
    sources = discover([cohort])
    chosen = select_runs(sources, participants=["01", "sub-03"], tasks=["rest"])
    assert [s.subject for s in chosen] == ["01", "03"]
    with pytest.raises(InputError, match=r"--participant-label: no run with sub-99 among the inputs"):
        select_runs(sources, participants=["01", "99"])
    with pytest.raises(InputError, match=r"--task-label: no run with task-nback"):
        select_runs(sources, tasks=["nback"])


def test_shards_cover_every_run_once():
    run_ids = [f"sub-{i:05d}_task-rest_run-{r}" for i in range(2000) for r in (1, 2)]
    for count in (1, 3, 8):
        owners = [[i for i in range(1, count + 1) if in_shard(run_id, (i, count))] for run_id in run_ids]
        assert all(len(o) == 1 for o in owners)
        sizes = np.bincount([o[0] for o in owners])[1:]
        assert sizes.min() > 0.8 * len(run_ids) / count  # a hash spreads runs evenly
    assert parse_shard("3/8") == (3, 8)
    for bad in ("0/0", "3/2", "0/4", "two/4", "1/", "1/2/3"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shards_and_selection_build_the_single_job_store(cohort, store_4mm, tmp_path):
    """Three array jobs by --shard, labels checked against the whole cohort, give the single job's store."""
    out = tmp_path / "sharded"
    for index in (1, 2, 3):
        assert main(["preprocess", str(cohort), "--out", str(out), "--quiet", "--no-report", "--grid", GRID, "--shard",
                     f"{index}/3"]) == 0
    same_store(out, store_4mm)
    picked = tmp_path / "picked"  # participants.tsv lists all six: the other four are not "unknown subjects"
    assert main(["preprocess", str(cohort), "--out", str(picked), "--quiet", "--no-report", "--grid", GRID,
                 "--participant-label", "02", "05"]) == 0
    assert Store(picked).manifest["subject"].tolist() == ["02", "05"]
    assert Store(picked).manifest["sex"].notna().all()


@pytest.mark.parametrize("subjects", [
    [["01", "02", "03", "04"], ["03", "04", "05", "06"]],  # two jobs, overlapping
    [["01", "02"], ["03", "04"], ["05", "06"]],  # three jobs, disjoint
    [["01", "02", "03", "04", "05", "06"]] * 3,  # three jobs, the same runs
])
def test_concurrent_jobs_write_one_store(cohort, store_4mm, tmp_path, subjects):
    out = tmp_path / "shared"
    jobs = [subprocess.Popen([*COMMAND, str(cohort), "--out", str(out), "--participant-label", *chosen],
                             stderr=subprocess.PIPE, text=True) for chosen in subjects]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read()
    same_store(out, store_4mm)  # every run once, bytes identical, nothing lost to another job's merge
    merge_manifest(str(out))  # the parts a job's end-of-job merge left (another merge held the lock)
    assert not list((out / PARTS).glob("*"))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet").drop(columns=BOOKKEEPING),
                                  Store(store_4mm).manifest.drop(columns=BOOKKEEPING))


def victim_writing(store: Path) -> bool:
    """Whether a temporary of sub-01, 02 or 03 is in the store (the victim job is mid-write)."""
    return any(p.name.startswith((".sub-01", ".sub-02", ".sub-03")) for p in (store / "runs").glob(".*")) \
        if (store / "runs").exists() else False


def test_a_killed_job_leaves_the_other_jobs_work_intact(cohort, store_4mm, tmp_path):
    out = tmp_path / "shared"
    victim = subprocess.Popen([*COMMAND, str(cohort), "--out", str(out), "--participant-label", "01", "02", "03"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    other = subprocess.Popen([*COMMAND, str(cohort), "--out", str(out), "--participant-label", "04", "05", "06"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not victim_writing(out):
        time.sleep(0.02)
    kill_job(victim)
    assert other.wait(timeout=300) == 0
    check = check_store(str(out))
    assert check.ok, check.problems
    written = set(Store(out).manifest["subject"])
    assert {"04", "05", "06"} <= written and written <= {"01", "02", "03", "04", "05", "06"}
    assert any("stale" in note for note in check.notes)  # the victim's temporary: its writer is gone
    assert main(["store", "compact", str(out)]) == 0
    assert not list((out / "runs").glob(".*"))
    assert main(["preprocess", str(cohort), "--out", str(out), "--quiet", "--no-report",
                 "--grid", GRID]) == 0  # the victim's job
    same_store(out, store_4mm)


def test_live_jobs_temporaries_are_kept(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = owned_temporary(runs / "sub-a.zarr")  # this process: alive
        mine.mkdir()
        live = runs / mine.name.replace(f"-{os.getpid()}-", f"-{sleeper.pid}-")
        live.mkdir()
        dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout.strip()
        dead = runs / mine.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-")
        dead.mkdir()
        elsewhere = runs / ".sub-b.zarr.tmp-othermachine-123-0123456789ab"  # another machine's job, busy
        (elsewhere / "bold").mkdir(parents=True)
        idle = runs / ".sub-c.zarr.tmp-othermachine-124-0123456789ab"  # another machine's, untouched for long
        idle.mkdir()
        old = time.time() - (STALE_HOURS + 1) * 3600
        os.utime(idle, (old, old))
        assert remove_stale_temporaries(tmp_path) == (2, 3)
        assert sorted(p.name for p in runs.iterdir()) == sorted(p.name for p in (mine, live, elsewhere))
    finally:
        sleeper.kill()


def test_parts_merge_and_adoption(store, tmp_path):
    copy = tmp_path / "copy"
    Store(store)  # the fixture store, folded: parts only appear when runs are written
    subprocess.run(["cp", "-r", str(store), str(copy)], check=True)
    (copy / "manifest.parquet").unlink()
    assert read_manifest(str(copy)).empty
    merged = merge_manifest(str(copy))  # complete runs without a row come back from their own records
    assert merged.runs == 6 and len(merged.adopted) == 6
    expected = Store(store).manifest
    restored = Store(copy).manifest
    record_columns = [c for c in expected.columns if c not in ("sex", "age", "diagnosis", "site", "score",
                                                               *BOOKKEEPING)]
    pd.testing.assert_frame_equal(restored[record_columns], expected[record_columns])


def test_store_check_finds_missing_shards_and_changed_values(store, tmp_path, capsys):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(store), str(copy)], check=True)
    assert main(["store", "check", str(copy), "--data"]) == 0
    first, second = Store(copy).manifest["run_id"][:2]
    shard = sorted((copy / "runs" / f"{first}.zarr" / "bold" / "c").rglob("*"))[-1]
    shard.unlink()
    group = zarr.open_group(str(copy / "runs" / f"{second}.zarr"), mode="r+")
    group["bold"][3, 20, 20, 20] = group["bold"][3, 20, 20, 20] + 1  # one value, silently changed
    capsys.readouterr()
    assert main(["store", "check", str(copy)]) == 1  # structure only: the missing shard
    out = capsys.readouterr().out
    assert f"problem: {first}: 2 of 3 bold shards on disk" in out and second not in out
    assert main(["store", "check", str(copy), "--data"]) == 1
    assert f"problem: {second}: stored values differ from their recorded data_sha256" in capsys.readouterr().out


def test_dask_local_cluster_store_equals_the_worker_processes_store(cohort, tmp_path):
    pytest.importorskip("distributed")
    by_workers = preprocess([cohort], tmp_path / "workers", PreprocessConfig(grid=GRID), workers=2,
                            progress=False)
    assert main(["preprocess", str(cohort), "--out", str(tmp_path / "dask"), "--grid", GRID,
                 "--quiet", "--no-report", "--dask", "local:2"]) == 0
    assert len(by_workers.processed) == 6
    same_store(tmp_path / "dask", tmp_path / "workers")
    extract_rois(str(tmp_path / "dask"), "power264", tmp_path / "roi-1", progress=False)
    assert main(["roi", str(tmp_path / "dask"), "--atlas", "power264", "--out", str(tmp_path / "roi-dask"),
                 "--dask", "local:2", "--quiet"]) == 0
    with np.load(tmp_path / "roi-1" / "fc.npz") as one, np.load(tmp_path / "roi-dask" / "fc.npz") as two:
        assert one["run_id"].tolist() == two["run_id"].tolist()
        np.testing.assert_array_equal(one["fisher_z"], two["fisher_z"])
    bad = tmp_path / "sub-bad_task-rest_bold.nii.gz"  # a truncated file beside good runs: reported, others go on
    raw = next(cohort.glob("sub-01/func/*_bold.nii.gz")).read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    good = next(cohort.glob("sub-02/func/*_bold.nii.gz"))
    result = preprocess([good, bad], tmp_path / "dask-bad", PreprocessConfig(grid=GRID),
                        dask="local:2", progress=False)
    assert result.processed == ["sub-02_task-rest_run-1"] and len(result.failures) == 1
    assert str(result.failures[0]).startswith(f"{bad}: cannot read frames")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_store_at_a_url(cohort, store_4mm, tmp_path, monkeypatch, workers):
    """Written through fsspec (memory:// in this process, file:// with worker processes): every run's data
    is uploaded before its manifest part, and the store reads back as the local one."""
    from neurostorm.data import preprocess as module

    url = "memory://url-store" if workers == 1 else f"file://{tmp_path}/url-store"
    published = module.write_part

    def part_after_data(location, row):
        fs, root = fsspec.core.url_to_fs(location)
        assert fs.exists(f"{root}/runs/{row['run_id']}.zarr/zarr.json"), "a manifest row before its data"
        published(location, row)

    monkeypatch.setattr(module, "write_part", part_after_data)
    config = PreprocessConfig(grid=GRID)
    result = preprocess([cohort], url, config, workers=workers, progress=False)
    assert len(result.processed) == 6 and not result.failures
    remote, local = Store(url), Store(store_4mm)
    run_id = local.manifest["run_id"][2]
    np.testing.assert_array_equal(remote.read_clip(run_id, 10, 20), local.read_clip(run_id, 10, 20))
    assert len(remote.manifest) == 6 and merge_manifest(url).parts == 6
    assert check_store(url, data=True).ok
    again = preprocess([cohort], url, config, workers=workers, progress=False)
    assert again.processed == [] and len(again.skipped) == 6
    if workers == 1:
        fsspec.filesystem("memory").rm("/url-store", recursive=True)


def test_new_labels_reach_the_manifest_without_preprocessing_again(cohort, store, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(store), str(copy)], check=True)
    labels = tmp_path / "groups.csv"
    labels.write_text("subject,group\n" + "".join(f"0{i},{'AB'[i % 2]}\n" for i in range(1, 7)))
    again = preprocess([cohort], copy, PreprocessConfig(), labels=labels, progress=False)
    assert again.processed == [] and len(again.skipped) == 6
    manifest = Store(copy).manifest
    assert manifest["group"].tolist() == ["B", "A", "B", "A", "B", "A"]
    assert manifest["sex"].isna().all()  # the label file replaces a subject's labels, as participants.tsv did
    unlabelled = preprocess([cohort / "sub-01"], copy, PreprocessConfig(), progress=False)  # no labels given
    assert unlabelled.skipped == ["sub-01_task-rest_run-1"]
    assert Store(copy).manifest["group"].tolist()[0] == "B"  # a job without labels keeps the earlier ones


def test_a_version_1_store_is_read_and_upgraded(cohort, store, tmp_path):
    old = tmp_path / "old"
    subprocess.run(["cp", "-r", str(store), str(old)], check=True)
    info = (old / "store.json").read_text().replace("neurostorm-store/2", "neurostorm-store/1")
    (old / "store.json").write_text(info)
    manifest = pd.read_parquet(old / "manifest.parquet").drop(columns=["written_at", "data_sha256"])
    manifest.to_parquet(old / "manifest.parquet", index=False)
    assert Store(old).manifest["run_id"].tolist() == Store(store).manifest["run_id"].tolist()
    assert check_store(str(old)).ok
    again = preprocess([cohort], old, PreprocessConfig(), progress=False)
    assert again.processed == [] and '"neurostorm-store/2"' in (old / "store.json").read_text()


def test_a_lock_left_by_a_killed_merge_is_taken_over_and_a_live_one_waited_for(store, tmp_path, capsys):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(store), str(copy)], check=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    holder = '{"host": "%s", "pid": %s, "time": %f}'
    (copy / "manifest.lock").write_text(holder % (os.uname().nodename, dead, time.time()))
    assert main(["store", "merge", str(copy)]) == 0 and not (copy / "manifest.lock").exists()
    (copy / "manifest.lock").write_text(holder % (os.uname().nodename, os.getpid(), time.time()))  # alive
    capsys.readouterr()
    assert main(["store", "merge", str(copy), "--wait", "0.5"]) == 2
    assert "another merge held manifest.lock for 0.5 s" in capsys.readouterr().err
