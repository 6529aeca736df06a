"""The HTML reports: the store's quality report (QC measures and flags, the manifest's QC columns) and the
reports of runs and comparisons, checked as a browser shows them (Debian's chromium driven by selenium
through its chromedriver)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurostorm.cli import main
from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.quality import DEFAULT_THRESHOLDS, robust_outliers, run_flags
from neurostorm.data.simulate import CohortConfig, simulate_cohort
from neurostorm.data.store import Store
from neurostorm.errors import InputError

GRID = "mni152-fsl-4mm-48"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _copy_subject(bids: Path, subject: str, change) -> None:
    """sub-01's run as a new subject, its data (X, Y, Z, T) passed through ``change``, header and affine kept."""
    source = bids / "sub-01" / "func"
    target = bids / f"sub-{subject}" / "func"
    target.mkdir(parents=True)
    for path in source.iterdir():
        out = target / path.name.replace("sub-01", f"sub-{subject}")
        if path.name.endswith(".nii.gz"):
            img = nib.load(path)
            data = np.asarray(img.dataobj)
            nib.save(nib.Nifti1Image(change(data, path.name).astype(data.dtype), img.affine, img.header), out)
        else:
            shutil.copy(path, out)
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    row = participants[participants["participant_id"] == "sub-01"].assign(participant_id=f"sub-{subject}")
    pd.concat([participants, row]).to_csv(bids / "participants.tsv", sep="\t", index=False)


def _flipped(data: np.ndarray, name: str) -> np.ndarray:
    return data[:, ::-1]  # front and back swapped, the affine kept: a header whose y axis disagrees with the data


def _spiking(data: np.ndarray, name: str) -> np.ndarray:
    if name.endswith("mask.nii.gz"):
        return data
    spiked = data.astype(np.float32)
    spiked[..., ::6] += 0.5 * spiked.mean(axis=-1, keepdims=True)  # a constant jump every sixth frame
    return spiked


@pytest.fixture(scope="module")
def qc_store(tmp_path_factory) -> Path:
    """Five subjects on the 4 mm grid: two plain runs, a planted flipped one and a planted spiking one, and a
    run whose data went missing after preprocessing; sub-01 has fMRIPrep's confounds file beside it."""
    root = tmp_path_factory.mktemp("qc")
    bids = root / "bids"
    simulate_cohort(bids, CohortConfig(subjects=3, n_frames=30, voxel_mm=4.0, spike_rate=0.0, seed=5))
    _copy_subject(bids, "flip", _flipped)
    _copy_subject(bids, "spike", _spiking)
    func = bids / "sub-01" / "func"
    pd.DataFrame({"framewise_displacement": ["n/a", *np.linspace(0.05, 0.4, 29).round(3)]}).to_csv(
        func / "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv", sep="\t", index=False)
    result = preprocess([bids], root / "store", PreprocessConfig(grid=GRID), workers=2, progress=False)
    assert not result.failures
    shutil.rmtree(root / "store" / "runs" / "sub-03_task-rest_run-1.zarr")
    return root / "store"


def test_flags_follow_the_thresholds():
    row = {"qc_flip": "", "mni_coverage": 0.95, "qc_tsnr": 60.0, "qc_dvars_outliers": 0.0, "storage": "int8",
           "quantization_rmse": 0.01}
    assert run_flags(row) == []
    assert run_flags({**row, "qc_flip": "z", "mni_coverage": 0.5, "qc_tsnr": 5.0, "qc_dvars_outliers": 0.2,
                      "quantization_rmse": 0.2}) == ["orientation", "coverage", "tsnr", "spikes", "quantization"]
    assert run_flags({**row, "storage": "float16", "quantization_rmse": 0.2}) == []  # no quantisation in float16
    series = np.r_[np.nan, np.ones(50) + np.random.default_rng(0).normal(0, 0.01, 50), 5.0]
    assert np.flatnonzero(robust_outliers(series, DEFAULT_THRESHOLDS.dvars_z)).tolist() == [51]


def test_training_without_flagged_runs_needs_a_report_first(store):
    with pytest.raises(InputError, match="no QC flags yet; run `neurostorm report"):
        _ = Store(store, exclude_flagged=True).manifest


@pytest.mark.parametrize("workers", [1, 2])
def test_the_report_lists_every_run_flags_the_planted_ones_and_the_missing_one(qc_store, tmp_path, workers, capsys):
    assert main(["report", str(qc_store), "--out", str(tmp_path / "report"), "--workers", str(workers)]) == 0
    assert "(3 of 5 runs flagged:" in capsys.readouterr().out
    manifest = Store(qc_store).manifest.set_index("run_id")
    assert manifest.loc["sub-flip_task-rest_run-1", "qc_flip"] == "y"
    assert "orientation" in manifest.loc["sub-flip_task-rest_run-1", "qc_flags"]
    assert "spikes" in manifest.loc["sub-spike_task-rest_run-1", "qc_flags"]
    assert manifest.loc["sub-01_task-rest_run-1", "qc_flags"] == ""
    missing = (tmp_path / "report" / "runs" / "sub-03_task-rest_run-1.html").read_text()
    assert "unreadable" in missing and "run group missing" in missing  # what `neurostorm store check` finds
    plain = (tmp_path / "report" / "runs" / "sub-01_task-rest_run-1.html").read_text()
    assert "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv" in plain
    assert "no confounds file beside the input" in (
        tmp_path / "report" / "runs" / "sub-02_task-rest_run-1.html").read_text()
    with pytest.warns(UserWarning, match="2 of 5 runs left out as flagged"):
        kept = Store(qc_store, exclude_flagged=True).manifest["run_id"].tolist()
    assert sorted(kept) == ["sub-01_task-rest_run-1", "sub-02_task-rest_run-1", "sub-03_task-rest_run-1"]


needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                   reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


@pytest.fixture
def browser(tmp_path):
    """Headless chromium, its console kept; offline (no component updates, no background connections)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1366,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def shown(driver, page: Path) -> list[tuple[bool, int, int]]:
    """Open ``page`` and wait for its images: (decoded, width, height) of each as laid out; the page's
    console must stay empty."""
    driver.get(page.as_uri())
    sizes = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([...document.images].map(i => i.decode().then(() => [true, i.width, i.height],"
        "                                                          () => [false, 0, 0]))).then(done);")
    assert driver.get_log("browser") == [], page
    assert all(decoded and width > 0 and height > 0 for decoded, width, height in sizes), (page, sizes)
    return sizes


@needs_browser
def test_the_store_report_in_a_browser(qc_store, tmp_path, browser):
    """Every page loads without console errors, every image decodes with a size, the table lists every run,
    sorts on a click and shows the planted runs' flags; screenshots are written for a person."""
    from selenium.webdriver.common.by import By

    out = tmp_path / "report"
    assert main(["report", str(qc_store), "--out", str(out)]) == 0
    shown(browser, out / "index.html")
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    flags = {row.find_element(By.TAG_NAME, "a").text: row.find_elements(By.TAG_NAME, "td")[1].text for row in rows}
    assert sorted(flags) == sorted(Store(qc_store).manifest["run_id"])
    assert "orientation" in flags["sub-flip_task-rest_run-1"] and "spikes" in flags["sub-spike_task-rest_run-1"]
    assert flags["sub-03_task-rest_run-1"] == "unreadable"
    browser.save_screenshot(str(tmp_path / "index.png"))
    tsnr = [h.text for h in browser.find_elements(By.TAG_NAME, "th")].index("tSNR")
    browser.find_elements(By.TAG_NAME, "th")[tsnr].click()
    values = [c.get_attribute("data-value") for c in browser.find_elements(
        By.CSS_SELECTOR, f"tbody tr td:nth-child({tsnr + 1})")]
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers) and len(numbers) == 4
    for run_id in flags:
        assert len(shown(browser, out / "runs" / f"{run_id}.html")) == (0 if run_id == "sub-03_task-rest_run-1" else 3)
    shown(browser, out / "runs" / "sub-flip_task-rest_run-1.html")
    browser.save_screenshot(str(tmp_path / "flipped-run.png"))
    assert (tmp_path / "index.png").stat().st_size > 10_000
    print(f"screenshots: {tmp_path / 'index.png'}, {tmp_path / 'flipped-run.png'}")


@needs_browser
def test_comparison_and_run_reports_in_a_browser(labelled_store, tmp_path, browser):
    """compare writes report.html (its table with CIs, the paired difference from FC + linear, the figure,
    the commands), and each method's run its own (metrics, figures, the command); all render offline."""
    from selenium.webdriver.common.by import By

    out = tmp_path / "sex"
    assert main(["compare", "--task", "tiny", "--models", "neurostorm-tiny:probe,fc-linear",
                 f"data.stores=[{labelled_store}]", "task.label=sex", "--out", str(out), "--quiet"]) == 0
    assert len(shown(browser, out / "report.html")) == 1
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Paired differences from fc-linear" in text and "neurostorm-tiny:probe − fc-linear" in text
    assert f"neurostorm compare --task {out / 'task.yaml'} --out {out}" in text
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.sortable tbody tr")) == 3  # 2 methods, 1 difference
    browser.save_screenshot(str(tmp_path / "comparison.png"))
    for run in sorted((out / "runs").iterdir()):
        figures = shown(browser, run / "report.html")
        assert len(figures) >= 2, run  # ROC and confusion at least
        assert "balanced_accuracy" in browser.find_element(By.TAG_NAME, "table").text
        assert f"neurostorm finetune --config {run / 'config.yaml'} --out {run}" in browser.page_source
    assert (out / "report.md").read_text().startswith("# Comparison: classification")
    print(f"screenshot: {tmp_path / 'comparison.png'}")
