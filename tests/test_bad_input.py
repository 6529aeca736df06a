"""The bad-input table of the user guide's Preprocessing page, row by row, with 1 and 2 worker processes: one
line on stderr naming the file and the problem, exit non-zero, nothing partial left, and the good run beside
the bad one still written."""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from neurostorm.cli import main
from neurostorm.data.grid import GRIDS
from neurostorm.data.runs import completed_record
from neurostorm.data.store import Store

from .conftest import mni_brain_run, write_run

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "user_guide" / "preprocessing.md"
HAXBY = Path(__file__).parent / "data" / "haxby2001" / "sub001_run001_bold_25mm.nii.gz"
GRID = "mni152-fsl-4mm-48"  # the table's checks hold on every grid; the 4 mm one keeps the test quick


@dataclass
class Case:
    inputs: list[Path]  # the bad input and a good run beside it
    bad: Path | str  # the file (or option, or scheduler) the message must name
    problem: str  # regular expression for the message after "path: "
    args: list[str] = field(default_factory=list)
    outcome: str = "run fails"  # "run fails" (the others are written), "job refused", "warning" or "written"


def good_run(tmp_path: Path) -> Path:
    data, affine = mni_brain_run(n_frames=20, voxel_mm=4.0, seed=7)
    return write_run(tmp_path / "good" / "sub-good_task-rest_bold.nii.gz", data, affine)


def bad_image(tmp_path: Path, name: str, n_frames: int = 20, tr: float | None = 2.0, edit=None,
              sidecar_tr: object = None) -> Path:
    data, affine = mni_brain_run(n_frames=n_frames, voxel_mm=4.0)
    data = edit(data) if edit else data
    path = write_run(tmp_path / "bad" / f"sub-{name}_task-rest_bold.nii.gz", data, affine, tr=tr)
    if sidecar_tr is not None:
        path.with_name(f"sub-{name}_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": sidecar_tr}))
    return path


def with_nan(data: np.ndarray) -> np.ndarray:
    data[20:23, 25, 20, 3:6] = np.nan  # frames 3-5 only
    return data


def constant(data: np.ndarray) -> np.ndarray:
    data[data > 0] = 500.0
    return data


def truncated(tmp_path: Path) -> Path:
    path = bad_image(tmp_path, "truncated", n_frames=40)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def labelled_bids(tmp_path: Path, content: str) -> tuple[list[Path], Path]:
    for subject in ("01", "02"):
        data, affine = mni_brain_run(n_frames=20, voxel_mm=4.0, seed=int(subject))
        write_run(tmp_path / "bids" / f"sub-{subject}" / "func" / f"sub-{subject}_task-rest_bold.nii.gz", data,
                  affine)
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    return [tmp_path / "bids"], labels


def make_case(name: str, tmp_path: Path) -> Case:
    good = good_run(tmp_path)
    if name in ("3d", "5d"):
        bad = bad_image(tmp_path, name, edit=(lambda d: d[..., 0]) if name == "3d" else
                        (lambda d: np.stack([d, d], axis=-1)))
        return Case([good, bad], bad, f"expected a 4D image \\(x, y, z, time\\), got a {name.upper()} image of shape")
    if name == "not_mni":
        return Case([good, HAXBY], HAXBY, r"does not look like whole-brain MNI152 data: \d+% of its brain lies inside",
                    ["--tr", "keep"])
    if name == "nan":
        bad = bad_image(tmp_path, name, edit=with_nan)
        return Case([good, bad], bad, r"^9 NaN/Inf voxel values in frames 3-5$")
    if name == "truncated":
        bad = truncated(tmp_path)
        return Case([good, bad], bad, r"cannot read frames \d+-\d+: .* \(truncated or corrupt file\?\)")
    if name == "constant":
        bad = bad_image(tmp_path, name, edit=constant)
        return Case([good, bad], bad, r"^zero variance over time in the brain voxels \(constant image\)$")
    if name == "short":
        bad = bad_image(tmp_path, name, n_frames=5)
        return Case([good, bad], bad, r"^11 frames after resampling to TR 0.8 s, fewer than one clip of 20$")
    if name == "no_tr":
        bad = bad_image(tmp_path, name, tr=None)
        return Case([good, bad], bad, r"missing TR: no RepetitionTime in a JSON sidecar and pixdim\[4\] is 0 "
                                      r"\(give --input-tr SECONDS\)")
    if name == "tr_ms":
        bad = bad_image(tmp_path, name, tr=2000.0)
        return Case([good, bad], bad, r"header TR 2000.0 with unit 'sec' read as milliseconds", outcome="warning")
    if name == "5d_trailing":  # (X, Y, Z, T, 1), as some converters write: the 4D image it is
        bad = bad_image(tmp_path, name, edit=lambda d: d[..., None])
        return Case([good, bad], bad, "", outcome="written")
    if name == "tr_ms_sidecar":
        bad = bad_image(tmp_path, name, sidecar_tr=2000)
        return Case([good, bad], bad, r"sidecar RepetitionTime 2000 read as milliseconds \(2 s\)", outcome="warning")
    if name == "tr_disagrees":
        bad = bad_image(tmp_path, name, n_frames=40, sidecar_tr=0.5)
        return Case([good, bad], bad, r"sidecar RepetitionTime 0.5 s disagrees with the header's 2 s; using the "
                                      r"sidecar's 0.5 s", outcome="warning")
    if name == "tr_text":
        bad = bad_image(tmp_path, name, sidecar_tr="two")
        return Case([good, bad], bad, r"^RepetitionTime 'two' in the JSON sidecar is not a number of seconds")
    if name == "tr_runaway":
        bad = bad_image(tmp_path, name, sidecar_tr=20)
        return Case([good, bad], bad, r"^source TR 20 s would resample 20 frames to 476 at TR 0.8 s, more than 10 "
                                      r"times as many: is the TR right\?")
    if name == "unforeseen":
        bad = bad_image(tmp_path, name)
        return Case([good, bad], bad, r"^cannot be preprocessed \(RuntimeError: planted\); nothing of it was written$")
    if name in ("out_file", "out_foreign"):
        out = tmp_path / ("taken.txt" if name == "out_file" else "project")
        if name == "out_file":
            out.write_text("a user's file")
        else:
            out.mkdir()
            (out / "notes.txt").write_text("a user's file")
        problem = "is a file" if name == "out_file" else r"is a folder of other files \(notes.txt\), not a store"
        return Case([good], out, problem, outcome="job refused")
    shards = {"shard_zero": ("0/0", "I must be between 1 and N"), "shard_over": ("3/2", "I must be between 1 and N"),
              "shard_text": ("two/4", "expected I/N such as 3/8")}
    if name in shards:
        return Case([good], "--shard", shards[name][1], ["--shard", shards[name][0]], outcome="job refused")
    if name == "dask_unreachable":
        address = "tcp://127.0.0.1:9"  # the discard port: nothing listens
        return Case([good], address, r"^cannot reach the Dask scheduler", ["--dask", address], outcome="job refused")
    if name == "other_format":
        store = tmp_path / "store"
        store.mkdir()
        (store / "store.json").write_text('{"format": "neurostorm-store/9", "neurostorm_version": "9.0"}')
        return Case([good], store, r"^store format 'neurostorm-store/9' \(written by neurostorm 9.0\); neurostorm "
                                   r"\S+ reads neurostorm-store/1, neurostorm-store/2$", outcome="job refused")
    contents = {"labels_unknown": ("subject,age\n01,30\n02,40\n03,50\n", r"rows for subject\(s\) not in the data: 03"),
                "labels_no_row": ("subject,age\n01,30\n", r"no row for subject\(s\): 02"),
                "labels_empty": ("subject,age\n01,30\n02,\n", r"missing 'age' for subject\(s\): 02")}
    inputs, labels = labelled_bids(tmp_path, contents[name][0])
    return Case(inputs, labels, contents[name][1], ["--labels", str(labels)], outcome="job refused")


ROWS = {  # the first cell of each row of the guide's table → the cases that test it
    "3D image, 5D image": ["3d", "5d"],
    "not MNI (e.g. native-space Haxby run)": ["not_mni"],
    "NaN / Inf voxels": ["nan"],
    "truncated `.nii.gz`": ["truncated"],
    "constant run": ["constant"],
    "too short": ["short"],
    "no TR anywhere": ["no_tr"],
    "TR in ms in a seconds header": ["tr_ms"],
    "5D image with a trailing size-1 axis (X, Y, Z, T, 1)": ["5d_trailing"],
    "TR in ms in a JSON sidecar (`RepetitionTime: 2000`)": ["tr_ms_sidecar"],
    "sidecar TR that disagrees with the header": ["tr_disagrees"],
    "sidecar TR that is not a number": ["tr_text"],
    "TR that would resample a run to many times its frames": ["tr_runaway"],
    "a failure nothing above foresaw": ["unforeseen"],
    "`--out` an existing file, or a folder of other files": ["out_file", "out_foreign"],
    "Ctrl-C (SIGINT) or SIGTERM mid-job": [],  # test_a_stopped_job_says_so_in_one_line_and_resumes
    "label file: unknown subjects, subjects without a row, empty values": ["labels_unknown", "labels_no_row",
                                                                          "labels_empty"],
    "job killed with SIGKILL mid-write": [],  # test_sigkill_mid_write_then_resume
    "malformed `--shard` (0/0, 3/2, text)": ["shard_zero", "shard_over", "shard_text"],
    "unreachable `--dask` scheduler": ["dask_unreachable"],
    "a store written by another format version": ["other_format"],
}


def guide_rows() -> list[str]:
    section = GUIDE.read_text().split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("|")]
    return [row for row in rows if row not in ("input", "---")]


def test_every_row_of_the_guide_table_is_tested():
    assert guide_rows() == list(ROWS)


def snapshot(path: Path) -> str | list[Path] | None:
    """A file's text or a folder's contents (None where nothing is), to show what a refused job left alone."""
    if path.is_file():
        return path.read_text()
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.exists() else None


def run_cli(capsys, *args) -> tuple[int, list[str], list[str]]:
    code = main(["preprocess", "--quiet", "--no-report", *map(str, args)])
    err = capsys.readouterr().err.splitlines()
    return code, [line for line in err if not line.startswith("warning:")], [line for line in err
                                                                               if line.startswith("warning:")]


def kill_job(process: subprocess.Popen) -> None:
    """SIGKILL a job's whole process group, as a scheduler does, and wait until none of it runs."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def assert_no_partial_run(store: Path) -> None:
    runs = store / "runs"
    for path in runs.iterdir() if runs.exists() else []:
        assert not path.name.startswith("."), f"left a temporary: {path}"
        assert completed_record(store, path.name.removesuffix(".zarr")) is not None, \
            f"incomplete run under its final name: {path}"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", [case for cases in ROWS.values() for case in cases])
def test_bad_input(tmp_path, capsys, monkeypatch, name, workers):
    case = make_case(name, tmp_path)
    if name == "unforeseen":  # a defect of ours or an input no check foresaw, in that run alone
        from neurostorm.data import preprocess as module

        def measure_or_fail(run):
            if "unforeseen" in run.source.path.name:
                raise RuntimeError("planted")
            return measure(run)

        measure = module.measure
        monkeypatch.setattr(module, "measure", measure_or_fail)  # worker processes are forked with it
    store = case.bad if name.startswith("out_") else tmp_path / "store"
    before = snapshot(store)
    code, errors, warned = run_cli(capsys, *case.inputs, "--out", store, "--grid", GRID, "--workers", workers,
                                   *case.args)
    if case.outcome in ("warning", "written"):
        assert code == 0 and not errors, errors
        if case.outcome == "warning":
            assert any(str(case.bad) in line and re.search(case.problem, line) for line in warned), warned
        assert len(Store(store).manifest) == 2
        return
    if name.startswith("out_"):  # the user's file or folder is left as it was
        assert code == 2 and len(errors) == 1 and errors[0].startswith(f"neurostorm preprocess: {case.bad}: ")
        assert re.search(case.problem, errors[0]), errors
        assert snapshot(store) == before
        return
    assert code != 0
    assert len(errors) == 1, errors
    prefix = f"neurostorm preprocess: {case.bad}: "
    assert errors[0].startswith(prefix), errors
    assert re.search(case.problem, errors[0][len(prefix):]), errors
    assert_no_partial_run(store)
    if case.outcome == "job refused":  # nothing written, an existing store.json untouched
        assert not list((store / "runs").glob("*")) and not list(store.glob("manifest*"))
        assert not (store / "store.json").exists() or "neurostorm-store/9" in (store / "store.json").read_text()
    else:
        assert Store(store).manifest["run_id"].tolist() == ["sub-good_task-rest"]


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_a_constant_run_is_refused_on_every_grid(tmp_path, capsys, grid):
    bad = bad_image(tmp_path, "constant", edit=constant)
    code, errors, _ = run_cli(capsys, bad, "--out", tmp_path / "store", "--grid", grid)
    assert code != 0 and len(errors) == 1 and "constant image" in errors[0], errors


def test_a_native_space_run_goes_through_with_non_mni_warn(tmp_path, capsys):
    code, _, warned = run_cli(capsys, HAXBY, "--out", tmp_path / "store", "--tr", "keep", "--non-mni", "warn")
    assert code == 0 and len(Store(tmp_path / "store").manifest) == 1
    assert any("does not look like whole-brain MNI152" in line for line in warned)


def test_an_unreadable_file_among_good_ones_with_workers(tmp_path, capsys):
    good, bad = good_run(tmp_path), tmp_path / "bad_bold.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 100))
    code, errors, _ = run_cli(capsys, good, bad, "--out", tmp_path / "store", "--grid", GRID, "--workers", 2)
    assert code != 0 and len(errors) == 1 and str(bad) in errors[0]
    assert Store(tmp_path / "store").manifest["run_id"].tolist() == ["sub-good_task-rest"]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_mid_write_then_resume(cohort, store_4mm, tmp_path, workers):
    """Kill a preprocessing job (all its processes, as a scheduler does) while it writes; resuming finishes
    with the same bytes as a clean run."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "neurostorm.cli", "preprocess", str(cohort), "--out", str(out), "--quiet",
               "--no-report", "--grid", GRID, "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        finished = [p for p in (out / "runs").glob("*.zarr")] if (out / "runs").exists() else []
        writing = list((out / "runs").glob(".*tmp-*")) if (out / "runs").exists() else []
        if finished and writing:
            break
        time.sleep(0.02)
    kill_job(process)
    assert list((out / "runs").glob(".*tmp-*")), "the kill should land mid-write"
    for path in (out / "runs").glob("*.zarr"):
        assert completed_record(out, path.name.removesuffix(".zarr")) is not None  # only complete runs are named

    assert main(["preprocess", str(cohort), "--out", str(out), "--quiet", "--no-report", "--grid", GRID,
                 "--workers", str(workers)]) == 0
    assert not list((out / "runs").glob(".*tmp-*"))
    clean, resumed = Store(store_4mm), Store(out)
    assert resumed.manifest["run_id"].tolist() == clean.manifest["run_id"].tolist()
    for run_id in clean.manifest["run_id"]:
        assert np.array_equal(clean.run(run_id)["bold"][...], resumed.run(run_id)["bold"][...])


@pytest.mark.parametrize("stop, workers", [(signal.SIGINT, 1), (signal.SIGINT, 2), (signal.SIGTERM, 1),
                                           (signal.SIGTERM, 2)])
def test_a_stopped_job_says_so_in_one_line_and_resumes(cohort, store_4mm, tmp_path, stop, workers):
    """Ctrl-C (SIGINT to the whole job, as a terminal sends it) or a scheduler's SIGTERM while runs are being
    written: one line, exit 128 + the signal, complete runs kept and none partial under its name, and a rerun
    finishes with nothing of the stopped job left."""
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "neurostorm.cli", "preprocess", str(cohort), "--out", str(out), "--quiet",
               "--no-report", "--grid", GRID, "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((out / "runs").glob(".*tmp-*") if (out / "runs").exists() else []):
        time.sleep(0.02)
    os.killpg(process.pid, stop)
    _, err = process.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert process.returncode == 128 + stop and len(lines) == 1, err
    assert lines[0].startswith(f"neurostorm preprocess: stopped by {signal.Signals(stop).name}; the runs finished "
                               "before it are complete in the store and none is partial")
    for path in (out / "runs").glob("*.zarr"):  # a run under its own name is complete (a temporary may remain)
        assert completed_record(out, path.name.removesuffix(".zarr")) is not None
    assert main(["preprocess", str(cohort), "--out", str(out), "--quiet", "--no-report", "--grid", GRID,
                 "--workers", str(workers)]) == 0
    assert_no_partial_run(out)  # the rerun removed what the stopped job left
    assert Store(out).manifest["run_id"].tolist() == Store(store_4mm).manifest["run_id"].tolist()
