"""Clip / ROI / FC datasets and subject-level splits."""

import json

import pandas as pd
import pytest
import torch

from neurostorm.data import ClipDataset, FCDataset, ROIDataset, Store, load_or_make_split, make_split
from neurostorm.data.roi import extract_rois
from neurostorm.errors import InputError


def test_clip_dataset(store):
    dataset = ClipDataset(store, sequence_length=20, label="sex")
    runs = Store(store).manifest
    assert len(dataset) == len(runs) * (58 // 20)  # non-overlapping clips of 20 from 58 frames
    item = dataset[1]
    assert item["x"].shape == (1, 96, 96, 96, 20) and item["x"].dtype == torch.float32
    assert item["start"] == 20 and item["y"].dtype == torch.long and dataset.classes == ["F", "M"]
    overlapping = ClipDataset(store, sequence_length=20, stride=10)
    assert len(overlapping) == len(runs) * 4
    age = ClipDataset(store, label="age", subjects=["01", "02"])
    assert len(age.runs) == 2 and age[0]["y"].dtype == torch.float32 and age.classes is None
    torch.manual_seed(0)
    cropped = ClipDataset(store, sequence_length=20, random_crop=True)
    starts = {cropped[0]["start"] for _ in range(20)}
    assert len(starts) > 1 and max(starts) <= 58 - 20


def test_clip_matches_store_frames_in_time_order(store):
    dataset = ClipDataset(store, sequence_length=20)
    item = dataset[0]
    frames = Store(store).read_clip(item["run_id"], 0, 20)
    assert torch.equal(item["x"][0, ..., 3], torch.from_numpy(frames[3]))  # time is the last axis


def test_splits_are_disjoint_stratified_seeded_and_reused(tmp_path):
    subjects = pd.DataFrame({"subject": [f"{i:02d}" for i in range(40)], "sex": ["F", "M"] * 20})
    split = make_split(subjects, (0.6, 0.2, 0.2), seed=1, stratify="sex")
    sets = [set(split[name]) for name in ("train", "val", "test")]
    assert sum(map(len, sets)) == 40 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert [len(s) for s in sets] == [24, 8, 8]
    for name in ("val", "test"):
        sexes = subjects.set_index("subject").loc[split[name], "sex"]
        assert (sexes == "F").sum() == (sexes == "M").sum()
    assert make_split(subjects, (0.6, 0.2, 0.2), seed=1, stratify="sex") == split
    assert make_split(subjects, (0.6, 0.2, 0.2), seed=2, stratify="sex") != split
    assert make_split(subjects.head(3), (1.0, 0.0, 0.0))["test"] != make_split(subjects.head(3), (1.0, 0.0, 0.0))["val"]

    path = tmp_path / "split.json"
    first = load_or_make_split(path, subjects, seed=5)
    assert load_or_make_split(path, subjects, seed=99) == first  # reused, not remade
    saved = json.loads(path.read_text())
    saved["val"].append(saved["train"][0])
    path.write_text(json.dumps(saved))
    with pytest.raises(InputError, match="more than one split"):
        load_or_make_split(path, subjects)


def test_roi_and_fc_datasets(store, tmp_path):
    extract_rois(str(store), "dosenbach160", tmp_path / "roi", progress=False)
    series = ROIDataset(tmp_path / "roi", label="sex", sequence_length=20)
    assert len(series) == 6 * 2 and series[0]["x"].shape == (20, 160)
    fc = FCDataset(tmp_path / "roi", subjects=["01", "03"], label="age")
    assert len(fc) == 2 and fc[0]["x"].shape == (160, 160) and fc[0]["y"].dtype == torch.float32
