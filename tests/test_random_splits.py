"""Repeated random subject splits: the draws, and the fixed-feature methods of a comparison scored on them."""

import numpy as np
import pandas as pd
import pytest

from neurostorm.cli import main
from neurostorm.data.splits import random_splits
from neurostorm.errors import InputError


def test_draws_are_disjoint_by_subject_reproducible_by_seed_and_stratified():
    labels = pd.Series(["a"] * 20 + ["b"] * 10 + ["c"] * 10, index=[f"s{i:02d}" for i in range(40)], name="dx")
    draws = random_splits(labels, 5, 30, seed=3, stratify=True)
    assert draws == random_splits(labels, 5, 30, seed=3, stratify=True)
    assert draws != random_splits(labels, 5, 30, seed=4, stratify=True)
    assert len({tuple(d["test"]) for d in draws}) == 5  # each draw its own
    for draw in draws:
        assert not set(draw["train"]) & set(draw["test"]) and len(draw["train"]) == 30 and len(draw["test"]) == 10
        assert labels[draw["test"]].value_counts().to_dict() == {"a": 5, "b": 2, "c": 3} or \
            labels[draw["test"]].value_counts().to_dict() == {"a": 5, "b": 3, "c": 2}
    with pytest.raises(InputError, match="class 'b' of 'dx' has 1 subject"):
        random_splits(labels.iloc[:21], 2, 15, stratify=True)


def test_compare_scores_fixed_feature_methods_on_random_splits(labelled_store, tmp_path, capsys):
    out = tmp_path / "cmp"
    methods = "neurostorm-tiny:probe,fc-linear,neurostorm-tiny:probe+mlp"
    assert main(["compare", "--task", "tiny", f"data.stores=[{labelled_store}]", "task.label=sex", "--quiet",
                 "model.overrides={embed_dim: 8}", "--models", methods,
                 "probe_steps=20", "--splits", "random:3", "--out", str(out)]) == 0
    scores = pd.read_csv(out / "random_splits.csv")
    assert sorted(scores["method"].unique()) == ["fc-linear", "neurostorm-tiny:probe"]
    assert (scores.groupby("method")["split"].apply(list) == [[1, 2, 3]] * 2).all()
    assert (scores["train_subjects"] + scores["test_subjects"] == 40).all()
    table = pd.read_csv(out / "table.csv").set_index("method")
    assert table.loc["fc-linear", "random_splits"] == 3
    assert np.isnan(table.loc["neurostorm-tiny:probe+mlp", "random_splits"])
    expected = scores.groupby("method")["balanced_accuracy"].mean()
    assert np.isclose(table.loc["fc-linear", "balanced_accuracy_random_mean"], expected["fc-linear"])
    differences = pd.read_csv(out / "random_split_differences.csv")
    assert differences[["a", "b", "splits"]].values.tolist() == [["fc-linear", "neurostorm-tiny:probe", 3]]
    assert "balanced_accuracy over 3 random splits (mean ± sd)" in (out / "table.md").read_text()
    assert table.loc["neurostorm-tiny:probe+mlp", "trainable_parameters"] > 0  # a token head, on the fixed split


@pytest.mark.parametrize("settings, says", [
    (["--splits", "random:x"], "--splits: expected random:N with N ≥ 1 (e.g. random:100), got 'random:x'"),
    (["task.label=diagnosis", "data.split_fractions=[0.9,0.05,0.05]", "--splits", "random:2"],
     "3 classes must fit in 2 test subjects"),
    (["task.kind=task_state", "--splits", "random:2"], "random subject splits score subject labels"),
])
def test_random_splits_refuse_what_they_cannot_score(labelled_store, tmp_path, capsys, settings, says):
    label = [] if any(s.startswith("task.") for s in settings) else ["task.label=sex"]
    assert main(["compare", "--task", "tiny", f"data.stores=[{labelled_store}]", *label, "--quiet",
                 "--models", "fc-linear", *settings, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
