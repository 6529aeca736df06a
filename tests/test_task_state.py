"""Task-state labels from BIDS events, and decoding real BOLD (Haxby 2001) through them."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurostorm import InputError
from neurostorm.data.events import condition_clips, events_for, frame_conditions, read_events
from neurostorm.tasks.task_state import clip_features, leave_one_run_out

from .conftest import TEST_DATA

HAXBY = TEST_DATA / "haxby2001"
HAXBY_TR = 2.5


def write_events(path, conditions, tr):
    """BIDS events (onset, duration, trial_type) from one condition per volume; 'rest' is no event."""
    rows, start = [], 0
    for i in range(1, len(conditions) + 1):
        if i == len(conditions) or conditions[i] != conditions[start]:
            if conditions[start] != "rest":
                rows.append((start * tr, (i - start) * tr, conditions[start]))
            start = i
    pd.DataFrame(rows, columns=["onset", "duration", "trial_type"]).to_csv(path, sep="\t", index=False)
    return path


def test_frames_and_clips_follow_the_blocks(tmp_path):
    events = pd.DataFrame({"onset": [2.0, 10.0], "duration": [4.0, 8.0], "trial_type": ["face", "house"]})
    conditions = frame_conditions(events, n_frames=12, tr=1.0)
    assert conditions.tolist() == [None, None, "face", "face", "face", "face", None, None, None, None,
                                   "house", "house"]
    assert frame_conditions(events, 12, 1.0, delay=2.0)[4:8].tolist() == ["face"] * 4
    assert condition_clips(conditions, length=2) == [(2, "face"), (4, "face"), (10, "house")]
    assert condition_clips(conditions, length=3, stride=1) == [(2, "face"), (3, "face")]
    assert condition_clips(conditions, length=2, exclude=("face",)) == [(10, "house")]


def test_events_are_validated_and_matched_by_entities(tmp_path):
    bad = tmp_path / "sub-01_task-x_events.tsv"
    bad.write_text("onset\tlength\n1\t2\n")
    with pytest.raises(InputError, match="lacks column"):
        read_events(bad)
    func = tmp_path / "deriv" / "sub-01" / "func"
    func.mkdir(parents=True)
    bold = func / "sub-01_task-faces_run-2_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    raw = tmp_path / "raw" / "sub-01" / "func"
    raw.mkdir(parents=True)
    for run in (1, 2):
        (raw / f"sub-01_task-faces_run-{run}_events.tsv").write_text("onset\tduration\ttrial_type\n0\t1\ta\n")
    assert events_for(bold, [tmp_path / "raw"]) == raw / "sub-01_task-faces_run-2_events.tsv"
    assert events_for(bold, []) is None


def haxby_runs(tmp_path):
    attributes = pd.read_csv(HAXBY / "slice_attributes_literal.txt", sep=" ", header=None, names=["label", "run"])
    bold = np.asarray(nib.load(HAXBY / "slice_bold.nii.gz").dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(HAXBY / "slice_mask.nii.gz").dataobj) > 0
    voxels = bold[mask].T  # (1452, 530)
    for run, rows in attributes.groupby("run"):
        events_path = write_events(tmp_path / f"sub-1_task-objects_run-{run + 1:02d}_events.tsv",
                                   rows["label"].tolist(), HAXBY_TR)
        frames = voxels[rows.index]
        frames = (frames - frames.mean(0)) / (frames.std(0) + 1e-6)  # z-score within run
        yield run, read_events(events_path), frames, rows["label"].to_numpy()


@pytest.mark.parametrize("length", [1, 4])
def test_haxby_categories_decoded_leave_one_run_out(tmp_path, length):
    features, labels, runs = [], [], []
    for run, events, frames, truth in haxby_runs(tmp_path):
        conditions = frame_conditions(events, len(frames), HAXBY_TR)
        assert [c or "rest" for c in conditions] == truth.tolist()  # events round-trip the volume labels
        clips = condition_clips(conditions, length)
        features.append(clip_features(frames, clips, length))
        labels += [c for _, c in clips]
        runs += [run] * len(clips)
    result = leave_one_run_out(np.concatenate(features), np.asarray(labels), np.asarray(runs), c=0.1)
    assert len(result["classes"]) == 8 and result["chance"] == 0.125
    print(f"Haxby 2001, 8 categories, clips of {length} volume(s): accuracy {result['accuracy']['value']:.3f} "
          f"[{result['accuracy']['ci_low']:.3f}, {result['accuracy']['ci_high']:.3f}]")
    assert result["accuracy"]["ci_low"] > 0.45  # the reference per-volume figure is 0.62; chance 0.125
