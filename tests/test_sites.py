"""Leave-site-out: a test set of whole sites, one cross-validation fold per site, metrics per site."""

import json

import pandas as pd
import pytest

from neurostorm import InputError
from neurostorm.cli import main
from neurostorm.data.splits import site_split
from neurostorm.data.store import Store

SUBJECTS = pd.DataFrame({"subject": [f"{i:02d}" for i in range(9)], "site": ["a", "b", "c"] * 3})


def test_the_test_set_is_the_named_sites_and_no_subject_crosses_over():
    split = site_split(SUBJECTS, ["b"], val_fraction=0.25, seed=0)
    assert split["test"] == ["01", "04", "07"]
    assert len(split["val"]) == 2 and set(split["train"]) | set(split["val"]) == set(SUBJECTS.subject) - {"01", "04",
                                                                                                            "07"}
    assert not set(split["train"]) & set(split["val"])
    with pytest.raises(InputError, match="no site z in the data; its sites: a, b, c"):
        site_split(SUBJECTS, ["z"], 0.25, 0)
    with pytest.raises(InputError, match="no 'site' column"):
        site_split(SUBJECTS.drop(columns="site"), ["a"], 0.25, 0)


def probe(store, out, *overrides):
    assert main(["finetune", "--config", "tiny", f"data.stores=[{store}]", "task.label=sex", "mode=probe",
                 "model.overrides={embed_dim: 8}", *overrides, "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_leave_one_site_out_and_one_fold_per_site(realistic_store, tmp_path):
    sites = Store(realistic_store).manifest.drop_duplicates("subject").set_index("subject")["site"].astype(str)
    metrics = probe(realistic_store, tmp_path / "out", "data.test_sites=[site2]")
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert set(sites[split["test"]]) == {"site2"} and "site2" not in set(sites[split["train"] + split["val"]])
    assert list(metrics["per_site"]) == ["site2"] and metrics["n_subjects"] == 4
    metrics = probe(realistic_store, tmp_path / "cv", "data.cv_by_site=true")
    assert metrics["task"]["folds"] == 3 and sorted(metrics["per_site"]) == ["site1", "site2", "site3"]
    assert metrics["n_subjects"] == 12 and all(m["n_subjects"] == 4 for m in metrics["per_site"].values())
    for k in range(3):  # each fold tests one whole site
        fold = json.loads((tmp_path / "cv" / f"fold-{k}" / "split.json").read_text())
        assert sites[fold["test"]].nunique() == 1


def test_a_site_that_does_not_exist_is_refused(realistic_store, tmp_path, capsys):
    assert main(["finetune", "--config", "tiny", f"data.stores=[{realistic_store}]", "task.label=sex", "mode=probe",
                 "data.test_sites=[mars]", "--out", str(tmp_path / "x")]) == 2
    assert "data.test_sites: no site mars in the data; its sites: site1, site2, site3" in capsys.readouterr().err
    assert not (tmp_path / "x" / "split.json").exists()


def test_leave_site_out_is_for_subject_labels(task_store, tmp_path, capsys):
    assert main(["finetune", "--config", "tiny", f"data.stores=[{task_store}]", "task.kind=task_state",
                 "data.test_sites=[a]", "--out", str(tmp_path / "x")]) == 2
    assert "leave-site-out splits subjects by site for subject labels" in capsys.readouterr().err
