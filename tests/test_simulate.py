"""The simulated cohort: deterministic, with ground truth, sites, task and stimulus runs that the pipeline reads."""

import dataclasses
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurostorm.data.datasets import EventClipDataset
from neurostorm.data.events import events_for, read_events
from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.simulate import CohortConfig, participants_table, simulate_cohort
from neurostorm.data.store import Store

CONFIG = CohortConfig(subjects=3, runs=2, task_runs=1, stimulus_runs=1, n_images=6, n_frames=50, voxel_mm=4.0,
                      sites=2, seed=5)


def test_simulated_cohort_is_deterministic_and_complete(tmp_path):
    a = simulate_cohort(tmp_path / "a", CONFIG)
    b = simulate_cohort(tmp_path / "b", CONFIG)
    pd.testing.assert_frame_equal(a, b)
    assert {"age", "sex", "diagnosis", "site", "score"} <= set(a.columns) and a["site"].nunique() == 2
    func = tmp_path / "a" / "sub-01" / "func"
    bolds = sorted(func.glob("*_desc-preproc_bold.nii.gz"))
    assert [p.name.split("_space")[0] for p in bolds] == [
        "sub-01_task-images_run-1", "sub-01_task-objects_run-1", "sub-01_task-rest_run-1", "sub-01_task-rest_run-2"]
    same = nib.load(tmp_path / "b" / "sub-01" / "func" / bolds[0].name)
    assert np.array_equal(np.asarray(nib.load(bolds[0]).dataobj), np.asarray(same.dataobj))
    objects = read_events(events_for(bolds[1], []))
    assert set(objects["trial_type"]) == {"faces", "houses", "tools"}
    with np.load(tmp_path / "a" / "stimuli.npz") as stimuli:
        assert stimuli["embeddings"].shape == (6, 32)
        assert set(read_events(events_for(bolds[0], []))["trial_type"]) <= set(stimuli["names"].tolist())


def test_simulated_task_runs_go_through_preprocessing_into_labelled_clips(tmp_path):
    simulate_cohort(tmp_path / "bids", dataclasses.replace(CONFIG, task_frames=70))
    result = preprocess([tmp_path / "bids"], tmp_path / "store", PreprocessConfig(grid="mni152-fsl-4mm-48"),
                        workers=2, progress=False)
    assert not result.failures and len(result.records) == 3 * 4
    frames = {r["run_id"].split("_task-")[1].split("_")[0]: r["n_frames"] for r in result.records}
    assert frames == {"rest": 123, "objects": 173, "images": 173}  # (n − 1) · 2 s / 0.8 s + 1 for n = 50, 70
    clips = EventClipDataset(tmp_path / "store", sequence_length=8, exclude=[f"image{k:02d}" for k in range(1, 7)])
    assert clips.classes == ["faces", "houses", "tools"] and len(clips) >= 3 * 3
    assert clips[0]["x"].shape == (1, 8, 48, 48, 48)  # as stored: (1, T, X, Y, Z)


@pytest.mark.parametrize("subjects, sites, seed", [(6, 3, 0), (8, 3, 0), (16, 3, 1), (7, 2, 4), (48, 3, 0)])
def test_sex_and_diagnosis_are_balanced_over_subjects_and_sites(subjects, sites, seed):
    table = participants_table(CohortConfig(subjects=subjects, sites=sites, seed=seed), np.random.default_rng(seed))
    sexes = table["sex"].value_counts()
    assert set(sexes.index) == {"F", "M"} and sexes.max() - sexes.min() <= 1
    diagnoses = table["diagnosis"].value_counts()
    assert set(diagnoses.index) == {"CN", "MDD", "SZ"} and diagnoses["CN"] >= diagnoses.drop("CN").max()
    for _, site in table.groupby("site"):
        if len(site) >= 2:
            assert site["sex"].nunique() == 2, site
    assert not (table.groupby("diagnosis")["sex"].nunique() == 1).all()  # sex is not tied to diagnosis


def test_susceptibility_dropout_drives_the_reference_fill_far_below_the_brain_and_a_fill_floor_bounds_it(tmp_path):
    """A low-contrast cohort with deep dropout, as fMRIPrep cohorts look after a global z-score: the
    reference fill (the brain minimum) lies near −10 z at 2 mm (below −6 on this 4 mm grid);
    ``fill_floor=-3`` clips the brain's low tail and the background to −3 and leaves every other value."""
    foreign = CohortConfig(subjects=1, n_frames=20, voxel_mm=4.0, sites=1, contrast=0.1, dropout=0.95, seed=2)
    simulate_cohort(tmp_path / "bids", foreign)
    simulate_cohort(tmp_path / "plain", dataclasses.replace(foreign, contrast=0.4, dropout=0.0))
    bold, plain = (nib.load(next((tmp_path / name).glob("sub-01/func/*_bold.nii.gz"))) for name in ("bids", "plain"))
    orbitofrontal = np.round(np.linalg.solve(bold.affine, [0, 36, -24, 1])[:3]).astype(int)
    ratio = bold.dataobj[(*orbitofrontal, 0)] / plain.dataobj[(*orbitofrontal, 0)]
    assert ratio < 0.2  # the dropout centre keeps a few per cent of its signal

    stores = {}
    for name, floor in (("reference", None), ("floored", -3.0)):
        config = PreprocessConfig(grid="mni152-fsl-4mm-48", tr=None, storage="float16", fill_floor=floor)
        (record,) = preprocess([tmp_path / "bids"], tmp_path / name, config, progress=False).records
        assert ("fill_floor" in json.loads(record["params"])) == (floor is not None)  # old stores stay valid
        stores[name] = (record, Store(tmp_path / name).read_clip(record["run_id"], 0, 20))
    (reference, clip), (floored, clipped) = stores["reference"], stores["floored"]
    assert reference["fill_value"] < -6 and floored["fill_value"] == -3.0
    assert clipped.min() >= -3.0 - 1e-3 and reference["norm_mean"] == floored["norm_mean"]
    above = clip > -3.0
    np.testing.assert_allclose(clipped[above], clip[above], atol=1e-2)
    np.testing.assert_allclose(clipped[~above], -3.0, atol=1e-3)


@pytest.mark.parametrize("settings", [{"dropout": 1.0}, {"contrast": -0.1}])
def test_cohort_settings_out_of_range_are_refused(settings):
    with pytest.raises(ValueError, match="must be in"):
        CohortConfig(**settings)
