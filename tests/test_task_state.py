"""Task-state labels from BIDS events, and decoding real BOLD (Haxby 2001) through them."""

import pandas as pd
import pytest

from benchmarks.haxby import HAXBY, TR, decode, haxby_runs
from neurostorm import InputError
from neurostorm.data.events import condition_clips, events_for, frame_conditions, read_events


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


@pytest.mark.parametrize("length", [1, 4])
def test_haxby_categories_decoded_leave_one_run_out(tmp_path, length):
    for _, events, frames, truth in haxby_runs(HAXBY, tmp_path):  # events round-trip the volume labels
        assert [c or "rest" for c in frame_conditions(events, len(frames), TR)] == truth.tolist()
    result = decode(HAXBY, length)
    assert len(result["classes"]) == 8 and result["chance"] == 0.125
    assert result["accuracy"]["ci_low"] > 0.45  # the reference per-volume figure is 0.62; chance 0.125
