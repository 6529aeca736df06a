"""The simulated cohort: deterministic, with ground truth, sites, task and stimulus runs that the pipeline reads."""

import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurostorm.data.datasets import EventClipDataset
from neurostorm.data.events import events_for, read_events
from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.simulate import CohortConfig, participants_table, simulate_cohort

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
    assert clips[0]["x"].shape == (1, 48, 48, 48, 8)


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
