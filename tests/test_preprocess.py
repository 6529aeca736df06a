"""Preprocessing end to end on simulated fMRIPrep data and on real NIfTI files."""

import json

import numpy as np
import pytest

from neurostorm.data.grid import MNI152_FSL_2MM_96
from neurostorm.data.preprocess import PreprocessConfig, output_length, preprocess, resample_time
from neurostorm.data.store import Store

from .conftest import NIBABEL_DATA, mni_brain_run, write_run


def test_resample_time_is_linear_between_frames():
    ramp = [np.full((2, 2, 2), 10.0 * t, np.float32) for t in range(6)]  # value = 10 × time in frames
    out = list(resample_time(iter(ramp), n_source=6, tr_source=2.0, tr_target=0.8))
    assert len(out) == output_length(6, 2.0, 0.8) == 13
    times = np.arange(13) * 0.8  # seconds; the ramp is 5 per second
    np.testing.assert_allclose([frame[0, 0, 0] for frame in out], 5.0 * times, atol=1e-4)
    assert len(list(resample_time(iter(ramp), 6, 2.0, None))) == 6


def test_store_manifest_and_normalisation(store, cohort):
    reader = Store(store)
    manifest = reader.manifest
    assert len(manifest) == 6
    row = manifest.iloc[0]
    assert row["template"] == "MNI152NLin2009cAsym" and row["source_orientation"] == "RAS"
    assert row["exact_reslice"] and row["mask_source"].startswith("file:")
    assert row["source_tr"] == 2.0 and row["tr"] == 0.8 and row["n_frames"] == output_length(24, 2.0, 0.8)
    assert json.loads(row["params"])["storage"] == "int8" and row["neurostorm_version"]
    assert len(row["source_sha256"]) == 64
    assert {"age", "sex"} <= set(manifest.columns)  # labels joined from participants.tsv
    assert reader.info["grid"]["shape"] == [96, 96, 96]
    assert (store / "qc_orientation.png").stat().st_size > 10_000

    frames = np.concatenate(list(reader.iter_frames(row["run_id"])))
    mask = reader.read_mask(row["run_id"])
    brain = frames[:, mask]
    assert abs(brain.mean()) < 0.01 and abs(brain.std() - 1.0) < 0.01  # global z-score over brain voxels
    np.testing.assert_allclose(frames[:, ~mask], row["fill_value"], atol=0.05)  # background is one constant
    assert row["fill_value"] == pytest.approx(brain.min(), abs=0.05)
    assert row["quantization_rmse"] < 0.02


@pytest.mark.parametrize("storage, tolerance", [("int8", 0.02), ("float16", 1e-3)])
def test_storage_precision(tmp_path, storage, tolerance):
    data, affine = mni_brain_run(n_frames=20)
    write_run(tmp_path / "in" / "scan.nii.gz", data, affine, tr=0.8)
    config = PreprocessConfig(tr=None, storage=storage)
    result = preprocess([tmp_path / "in"], tmp_path / "store", config, progress=False)
    (record,) = result.records
    assert record["storage"] == storage and record["quantization_rmse"] < tolerance
    reader = Store(tmp_path / "store")
    clip = reader.read_clip(record["run_id"], 0, 20)
    # an exact 2 mm reslice: compare with a direct z-score of the input on the target grid
    mask = reader.read_mask(record["run_id"])
    expected = (data[data > 0].reshape(-1, 20) - record["norm_mean"]) / record["norm_std"]
    assert mask.sum() == expected.shape[0]
    np.testing.assert_allclose(np.sort(clip[:, mask].ravel()), np.sort(expected.T.ravel()), atol=4 * tolerance)


def test_resume_skips_done_runs_and_redoes_changed_parameters(store, cohort, tmp_path):
    again = preprocess([cohort], store, PreprocessConfig(), progress=False)
    assert again.processed == [] and len(again.skipped) == 6
    copy = tmp_path / "one"
    first = sorted(cohort.glob("sub-01/func/*"))
    for path in first:
        (copy / "sub-01" / "func").mkdir(parents=True, exist_ok=True)
        (copy / "sub-01" / "func" / path.name).write_bytes(path.read_bytes())
    preprocess([copy], tmp_path / "s", PreprocessConfig(), progress=False)
    changed = preprocess([copy], tmp_path / "s", PreprocessConfig(storage="float16"), progress=False)
    assert changed.processed == ["sub-01_task-rest_run-1"]
    assert Store(tmp_path / "s").manifest["storage"].tolist() == ["float16"]


def test_parallel_workers_write_identical_stores(cohort, store, tmp_path):
    parallel = preprocess([cohort], tmp_path / "par", PreprocessConfig(), workers=2, progress=False)
    assert len(parallel.processed) == 6
    one, two = Store(store), Store(tmp_path / "par")
    for run_id in one.manifest["run_id"]:
        assert np.array_equal(one.run(run_id)["bold"][...], two.run(run_id)["bold"][...])


def test_las_and_ras_copies_of_one_run_give_the_same_store(tmp_path):
    data, affine = mni_brain_run(n_frames=20, orientation="RAS", seed=1)
    write_run(tmp_path / "ras" / "sub-a_bold.nii.gz", data, affine)
    las_affine = affine.copy()
    las_affine[0, 0], las_affine[0, 3] = -affine[0, 0], affine[0, 3] + affine[0, 0] * (data.shape[0] - 1)
    write_run(tmp_path / "las" / "sub-a_bold.nii.gz", data[::-1].copy(), las_affine)
    results = [preprocess([tmp_path / o], tmp_path / f"st-{o}", PreprocessConfig(tr=None), progress=False)
               for o in ("ras", "las")]
    assert [r.records[0]["source_orientation"] for r in results] == ["RAS", "LAS"]
    ras, las = Store(tmp_path / "st-ras"), Store(tmp_path / "st-las")
    run_id = results[0].records[0]["run_id"]
    assert np.array_equal(ras.run(run_id)["bold"][...], las.run(run_id)["bold"][...])


def test_real_nifti_at_other_resolution_goes_through_interpolation(tmp_path):
    # nibabel's functional.nii: real BOLD, 4×4×8 mm, partial field of view, not MNI
    with pytest.warns(UserWarning, match="does not look like whole-brain MNI152"):
        result = preprocess([NIBABEL_DATA / "functional.nii"], tmp_path / "st",
                            PreprocessConfig(non_mni="warn", min_frames=10), progress=False)
    (record,) = result.records
    assert record["exact_reslice"] is False and record["n_frames"] == output_length(20, 2.0, 0.8)
    assert Store(tmp_path / "st").read_clip(record["run_id"], 0, 10).shape == (10, *MNI152_FSL_2MM_96.shape)
