"""Task families come from a registry: one defined outside the package runs through finetune,
cross-validation and compare; plugins load through an entry-point group; unknown kinds are named."""

import json
import sys
import textwrap

import pandas as pd
import pytest

import neurostorm.tasks as tasks
from neurostorm.cli import main
from neurostorm.data.files import write_json_atomic
from neurostorm.data.splits import load_or_make_split
from neurostorm.data.store import Store
from neurostorm.tasks import FAMILIES, TaskFamily, register_task, task_family, task_kinds
from neurostorm.train.data import split_path, subjects_table


class MajorityLabel(TaskFamily):
    """A toy family: every test subject gets the most common label of the training subjects."""

    kind = "majority_label"
    metrics = ("accuracy",)
    subject_labels = True

    def run(self, config, run_dir, checkpoint=None):
        store = Store(config.data.stores[0].path)
        table = subjects_table(store).dropna(subset=[config.task.label])
        split = load_or_make_split(split_path(config, run_dir), table, config.data.split_fractions,
                                   config.trainer.seed)
        labels = table.set_index("subject")[config.task.label].astype(str)
        guess = labels[split["train"]].mode()[0]
        frame = pd.DataFrame({"subject": split["test"], "y": labels[split["test"]].to_numpy(), "guess": guess})
        return self.score_folds(frame, {"kind": self.kind, "mode": config.mode, "trainable_parameters": 0},
                                run_dir, store)

    def score_folds(self, pooled, task, run_dir, store):
        pooled.to_csv(run_dir / self.predictions, index=False)
        share = float((pooled["y"].astype(str) == pooled["guess"].astype(str)).mean())
        metrics = {"accuracy": {"value": share, "ci_low": share, "ci_high": share}, "n_subjects": len(pooled),
                   "task": task}
        write_json_atomic(run_dir / "metrics.json", metrics)
        return metrics


@pytest.fixture
def majority_label():
    register_task(MajorityLabel)
    yield
    FAMILIES.pop(MajorityLabel.kind)


def test_a_family_from_outside_runs_through_finetune_cross_validation_and_compare(labelled_store, tmp_path,
                                                                                 majority_label, capsys):
    common = ["--config", "tiny", f"data.stores=[{labelled_store}]", "task.kind=majority_label", "task.label=sex",
              "--quiet"]
    assert main(["finetune", *common, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert one["task"]["kind"] == "majority_label" and 0 <= one["accuracy"]["value"] <= 1
    assert main(["finetune", *common, "data.cv_folds=3", "--out", str(tmp_path / "cv")]) == 0
    pooled = pd.read_csv(tmp_path / "cv" / "predictions.csv", dtype={"subject": str})
    subjects = subjects_table(Store(labelled_store))
    assert sorted(pooled["subject"]) == sorted(subjects["subject"])  # every subject tested once
    assert json.loads((tmp_path / "cv" / "metrics.json").read_text())["task"]["folds"] == 3
    assert main(["compare", "--task", "tiny", *common[2:], "--models", "neurostorm-tiny,fc-linear",
                 "--out", str(tmp_path / "cmp")]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "table.csv")
    assert table["method"].tolist() == ["neurostorm-tiny", "fc-linear"] and table["accuracy"].notna().all()
    assert "accuracy [95 % CI]" in (tmp_path / "cmp" / "table.md").read_text()


def test_an_unknown_kind_names_the_registered_families(labelled_store, tmp_path, capsys):
    assert main(["finetune", "--config", "tiny", f"data.stores=[{labelled_store}]", "task.kind=phenotype_x",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "task.kind: unknown task kind 'phenotype_x'; registered: classification, image_retrieval, " \
           "regression, reidentification, task_state" in err
    assert not (tmp_path / "run").exists()


def test_plugins_load_through_the_entry_point_group_and_a_broken_one_is_named(tmp_path, monkeypatch):
    (tmp_path / "toy_tasks.py").write_text(textwrap.dedent("""
        from neurostorm.tasks import TaskFamily

        class Toy(TaskFamily):
            kind = "toy"
            metrics = ("score",)
    """))
    (tmp_path / "broken_tasks.py").write_text("raise ImportError('needs a package that is not installed')\n")
    info = tmp_path / "toy_tasks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-tasks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[neurostorm.tasks]\ntoy = toy_tasks:Toy\nbroken = broken_tasks:Broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(tasks, "_plugins_loaded", False)
    monkeypatch.setattr(tasks, "FAMILIES", dict(FAMILIES))
    with pytest.warns(UserWarning, match=r"task family plugin broken \(broken_tasks:Broken\) cannot be loaded: "
                                         "ImportError: needs a package"):
        kinds = task_kinds()
    assert "toy" in kinds and "classification" in kinds
    assert task_family("toy").headline == "score"
    sys.modules.pop("toy_tasks", None)


def test_a_kind_is_registered_once():
    with pytest.raises(ValueError, match="task kind 'classification' is already registered by Classification"):
        register_task(type("Other", (TaskFamily,), {"kind": "classification", "metrics": ("x",)}))
