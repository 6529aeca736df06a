"""Discovery of runs in BIDS / fMRIPrep folders, entities, sidecars, TR and labels."""

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neurostorm.data.ingest import discover, parse_entities, read_labels, repetition_time, template_of
from neurostorm.errors import InputError

from .conftest import NIBABEL_DATA, write_run


def test_parse_entities():
    entities, suffix = parse_entities(Path(
        "sub-01_ses-pre_task-rest_run-2_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz"))
    assert entities == {"sub": "01", "ses": "pre", "task": "rest", "run": "2", "space": "MNI152NLin6Asym",
                        "res": "2", "desc": "preproc"}
    assert suffix == "bold"
    assert parse_entities(Path("my_scan.nii.gz")) == ({}, None)
    assert parse_entities(Path("task-rest_bold.json"), require_subject=False) == ({"task": "rest"}, "bold")


def test_template_variant_from_space():
    assert template_of("MNI152NLin2009cAsym") == "MNI152NLin2009cAsym"
    assert template_of("MNI152NLin6Asym") == "MNI152NLin6Asym"
    assert template_of("T1w") is None


def test_discover_fmriprep_derivatives(cohort):
    # a native-space copy next to the MNI one must be ignored, as must masks
    first = next(cohort.glob("sub-01/func/*_desc-preproc_bold.nii.gz"))
    native = first.with_name(first.name.replace("space-MNI152NLin2009cAsym_res-2", "space-T1w"))
    native.write_bytes(first.read_bytes())
    try:
        sources = discover([cohort])
    finally:
        native.unlink()
    assert [s.run_id for s in sources] == [f"sub-{i:02d}_task-rest_run-1" for i in range(1, 7)]
    source = sources[0]
    assert source.subject == "01" and source.task == "rest" and source.run == "1"
    assert source.template == "MNI152NLin2009cAsym"
    assert source.mask_path is not None and "desc-brain_mask" in source.mask_path.name
    assert source.sidecar["RepetitionTime"] == 2.0
    # one subject's folder (no dataset_description.json, no sub-* inside) is read the same way
    assert [s.run_id for s in discover([cohort / "sub-02"])] == ["sub-02_task-rest_run-1"]


def test_sidecar_inheritance_from_dataset_root(tmp_path):
    data = np.ones((4, 4, 4, 5), np.float32)
    write_run(tmp_path / "sub-01" / "func" / "sub-01_task-nback_bold.nii.gz", data, np.eye(4), tr=None)
    (tmp_path / "dataset_description.json").write_text("{}")
    (tmp_path / "task-nback_bold.json").write_text(json.dumps({"RepetitionTime": 0.72}))
    (source,) = discover([tmp_path])
    img = nib.load(source.path)
    assert repetition_time(source, img.header) == 0.72


def test_tr_from_header_and_milliseconds_defect():
    (functional,) = discover([NIBABEL_DATA / "functional.nii"])
    assert repetition_time(functional, nib.load(functional.path).header) == 2.0
    (example,) = discover([NIBABEL_DATA / "example4d.nii.gz"])  # header says 2000 with unit 'sec'
    with pytest.warns(UserWarning, match="milliseconds"):
        assert repetition_time(example, nib.load(example.path).header) == pytest.approx(2.0)


def test_missing_tr_is_an_error_naming_the_file(tmp_path):
    path = write_run(tmp_path / "scan.nii.gz", np.ones((4, 4, 4, 5), np.float32), np.eye(4), tr=None)
    (source,) = discover([path])
    with pytest.raises(InputError, match="scan.nii.gz: missing TR"):
        repetition_time(source, nib.load(path).header)
    assert repetition_time(source, nib.load(path).header, override=1.5) == 1.5


def test_labels_strict_and_lenient(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("subject,age,sex\nsub-01,30,F\n02,,M\n03,50,F\n")
    with pytest.raises(InputError, match=r"labels.csv: .*not in the data: 03.*no row for subject\(s\): 04"
                                         r".*missing 'age' for subject\(s\): 02"):
        read_labels(table, ["01", "02", "04"])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        labels = read_labels(table, ["01", "02", "04"], strict=False)
    assert labels.loc["01", "age"] == 30 and np.isnan(labels.loc["02", "age"])
    assert list(labels["sex"]) == ["F", "M"]
