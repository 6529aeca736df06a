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
from neurostorm.evaluation.target import Target
from neurostorm.tasks import FAMILIES, TaskFamily, register_task, task_family, task_kinds
from neurostorm.tasks.prediction import PredictionTask
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


class SeverityScore(PredictionTask):
    """A new prediction family declared by its target alone: a value per subject, scored by MAE first."""

    kind = "severity_score"
    metrics = ("mae", "pearson_r", "mse")
    target = Target(values=True)
    subject_labels = True


def test_a_prediction_family_is_its_target_trained_evaluated_and_applied_without_naming_its_kind(
        labelled_store, tmp_path, capsys):
    register_task(SeverityScore)
    try:
        run = tmp_path / "run"
        assert main(["finetune", "--config", "tiny", f"data.stores=[{labelled_store}]", "task.kind=severity_score",
                     "task.label=score", "optim.epochs=1", "--out", str(run), "--quiet"]) == 0
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["task"]["target"] == {"values": True, "per_clip": False, "stratified": False}
        assert {"mae", "pearson_r", "mse"} <= set(metrics) and "chance" not in metrics
        assert (run / "figures" / "predicted_vs_true.png").exists()
        capsys.readouterr()
        assert main(["evaluate", str(run)]) == 0
        recomputed = [line.split() for line in capsys.readouterr().out.splitlines()]
        assert ["mae", f"{metrics['mae']['value']:.3f}"] in [line[:2] for line in recomputed]
        assert main(["predict", "--config", "tiny", f"data.stores=[{labelled_store}]", f"model.init={run / 'model'}",
                     "--out", str(tmp_path / "applied"), "--quiet"]) == 0
        table = pd.read_csv(tmp_path / "applied" / "subject_predictions.csv")
        assert table["score"].dtype == float and len(table) == len(subjects_table(Store(labelled_store)))
    finally:
        FAMILIES.pop(SeverityScore.kind)


def test_task_records_saved_before_the_target_was_recorded_read_as_their_kind():
    assert Target.of_task({"kind": "regression"}) == Target(values=True)
    assert Target.of_task({"kind": "task_state"}) == Target(per_clip=True)
    assert Target.of_task({"kind": "classification"}) == Target(stratified=True)
    assert Target.of_task({"kind": "regression", "target": Target(stratified=True).record()}).stratified
