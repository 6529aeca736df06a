"""Bad input: one line on stderr naming the file and the problem, exit non-zero, nothing partial left."""

import gzip
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neurostorm.cli import main
from neurostorm.data.store import Store, completed_record

from .conftest import mni_brain_run, write_run

HAXBY = Path(__file__).parent / "data" / "haxby2001" / "sub001_run001_bold_25mm.nii.gz"


def run_cli(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["preprocess", "--quiet", *map(str, args)])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    return code, err


def assert_nothing_written(store: Path) -> None:
    runs = store / "runs"
    assert not runs.exists() or not any(runs.iterdir()), sorted(runs.iterdir())


def good_run(tmp_path: Path, **kwargs) -> Path:
    data, affine = mni_brain_run(n_frames=20)
    return write_run(tmp_path / "good_bold.nii.gz", data, affine, **kwargs)


@pytest.mark.parametrize("case, problem", [
    ("3d", "expected a 4D image .* got a 3D image"),
    ("5d", "expected a 4D image .* got a 5D image"),
    ("nan", "NaN/Inf voxel values"),
    ("constant", "zero variance"),
    ("short", "fewer than one clip of 20"),
    ("no_tr", "missing TR"),
])
def test_bad_image(tmp_path, capsys, case, problem):
    data, affine = mni_brain_run(n_frames=5 if case == "short" else 20)
    if case == "3d":
        data = data[..., 0]
    elif case == "5d":
        data = np.stack([data, data], axis=-1)
    elif case == "nan":
        data[40, 50, 40, 3] = np.nan
    elif case == "constant":
        data[data > 0] = 500.0
    path = write_run(tmp_path / f"{case}.nii.gz", data, affine, tr=None if case == "no_tr" else 2.0)
    code, err = run_cli(capsys, path, "--out", tmp_path / "store")
    assert code != 0
    assert len(err) == 1 and err[0].startswith(f"neurostorm preprocess: {path}: "), err
    assert re.search(problem, err[0]), err
    assert_nothing_written(tmp_path / "store")


def test_truncated_gzip(tmp_path, capsys):
    path = good_run(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    code, err = run_cli(capsys, path, "--out", tmp_path / "store")
    assert code != 0 and len(err) == 1 and str(path) in err[0] and "truncated or corrupt" in err[0]
    assert_nothing_written(tmp_path / "store")


def test_not_mni_real_native_space_run_is_refused_or_warned(tmp_path, capsys):
    code, err = run_cli(capsys, HAXBY, "--out", tmp_path / "store", "--tr", "keep")
    assert code != 0 and len(err) == 1 and str(HAXBY) in err[0] and "does not look like whole-brain MNI152" in err[0]
    assert_nothing_written(tmp_path / "store")
    code, _ = run_cli(capsys, HAXBY, "--out", tmp_path / "store", "--tr", "keep", "--non-mni", "warn")
    assert code == 0 and len(Store(tmp_path / "store").manifest) == 1


def test_one_bad_run_does_not_stop_the_good_ones(tmp_path, capsys):
    good = good_run(tmp_path)
    bad = tmp_path / "bad_bold.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 100))
    code, err = run_cli(capsys, good, bad, "--out", tmp_path / "store")
    assert code != 0 and len(err) == 1 and str(bad) in err[0]
    assert Store(tmp_path / "store").manifest["run_id"].tolist() == ["sub-goodbold"]


@pytest.mark.parametrize("content, problem", [
    ("subject,age\n01,30\n02,40\n03,50\n", r"not in the data: 03"),
    ("subject,age\n01,30\n", r"no row for subject\(s\): 02"),
    ("subject,age\n01,30\n02,\n", r"missing 'age' for subject\(s\): 02"),
])
def test_bad_label_file(tmp_path, capsys, content, problem):
    for subject in ("01", "02"):
        data, affine = mni_brain_run(n_frames=20, seed=int(subject))
        write_run(tmp_path / "bids" / f"sub-{subject}" / "func" / f"sub-{subject}_task-rest_bold.nii.gz", data, affine)
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    code, err = run_cli(capsys, tmp_path / "bids", "--out", tmp_path / "store", "--labels", labels)
    assert code != 0 and len(err) == 1 and str(labels) in err[0]
    assert re.search(problem, err[0]), err
    assert_nothing_written(tmp_path / "store")


def test_sigkill_mid_write_then_resume(cohort, store, tmp_path):
    """Kill a preprocessing job while it writes; resuming finishes with the same bytes as a clean run."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "neurostorm.cli", "preprocess", str(cohort), "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        finished = [p for p in (out / "runs").glob("*.zarr")] if (out / "runs").exists() else []
        writing = list((out / "runs").glob(".*tmp-*")) if (out / "runs").exists() else []
        if finished and writing:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert list((out / "runs").glob(".*tmp-*")), "the kill should land mid-write"
    for path in (out / "runs").glob("*.zarr"):
        assert completed_record(path) is not None  # only complete runs carry a final name

    assert main(["preprocess", str(cohort), "--out", str(out), "--quiet"]) == 0
    assert not list((out / "runs").glob(".*tmp-*"))
    clean, resumed = Store(store), Store(out)
    assert resumed.manifest["run_id"].tolist() == clean.manifest["run_id"].tolist()
    for run_id in clean.manifest["run_id"]:
        assert np.array_equal(clean.run(run_id)["bold"][...], resumed.run(run_id)["bold"][...])
