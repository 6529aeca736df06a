"""Label-efficiency curves: seeded, stratified subsamples of one split's training subjects, every method."""

import json

import pandas as pd
import pytest

from neurostorm import InputError
from neurostorm.cli import main
from neurostorm.workflows.curves import parse_sizes, subsample


def test_subsamples_are_stratified_seeded_and_keep_every_class():
    train = [f"{i:02d}" for i in range(20)]
    labels = pd.Series({s: "CN" if i < 14 else ("SZ" if i < 18 else "MDD") for i, s in enumerate(train)})
    for size in (3, 5, 10, 20):
        chosen = subsample(train, labels, size, [0, size, 0])
        assert len(chosen) == size and set(labels[chosen]) == {"CN", "SZ", "MDD"}
        assert chosen == subsample(train, labels, size, [0, size, 0])
    assert subsample(train, labels, 10, [0, 10, 0]) != subsample(train, labels, 10, [0, 10, 1])
    assert (labels[subsample(train, labels, 10, [0, 10, 0])] == "CN").sum() == 7  # the class proportions
    assert len(subsample(train, None, 6, [1])) == 6


def test_sizes_parse_as_counts_fractions_or_all():
    assert parse_sizes("4, 8,all") == [4, 8, None] and parse_sizes("0.25,1.0") == [0.25, 1.0]
    for bad in ("0", "1.5", "many", ""):
        with pytest.raises(InputError, match="--train-subjects"):
            parse_sizes(bad)


def test_a_curve_runs_every_method_at_every_size_on_the_same_test_subjects(labelled_store, tmp_path, capsys):
    out = tmp_path / "curve"
    assert main(["compare", "--task", "tiny", "--models", "neurostorm-tiny:probe,fc-linear",
                 f"data.stores=[{labelled_store}]", "task.label=sex", "data.split_fractions=[0.5,0.1,0.4]",
                 "--train-subjects", "4,all,500", "--repeats", "2", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "mean over repeats" in printed.out
    assert "warning: --train-subjects 500: skipped: 500 training subjects asked" in printed.err
    curve = pd.read_csv(out / "curve.csv")
    ran = curve.dropna(subset=["method"])
    assert sorted(ran.groupby(["train_subjects", "repeat"]).size().index.tolist()) == [(4, 0), (4, 1), (20, 0)]
    assert set(ran["method"]) == {"neurostorm-tiny:probe", "fc-linear"} and ran["balanced_accuracy"].notna().all()
    assert curve["note"].fillna("").str.contains("skipped: 500 training subjects asked, the split has 20").any()
    base = json.loads((out / "split.json").read_text())
    for repeat in (0, 1):
        split = json.loads((out / "curve" / f"n4-r{repeat}" / "split.json").read_text())
        assert split["test"] == base["test"] and split["val"] == base["val"] and len(split["train"]) == 4
        assert set(split["train"]) <= set(base["train"])
    differences = pd.read_csv(out / "curve_differences.csv")
    assert len(differences) == 3 and set(differences["b"]) == {"neurostorm-tiny:probe"}
    assert (out / "curve.png").stat().st_size > 10_000


def test_curves_refuse_task_state(task_store, tmp_path, capsys):
    assert main(["compare", "--task", "tiny", "--models", "neurostorm-tiny:probe", f"data.stores=[{task_store}]",
                 "task.kind=task_state", "--train-subjects", "2", "--out", str(tmp_path / "x")]) == 2
    assert "label-efficiency curves subsample labelled subjects" in capsys.readouterr().err


def test_a_curve_with_no_size_that_can_run_is_refused(labelled_store, tmp_path, capsys):
    assert main(["compare", "--task", "tiny", "--models", "fc-linear", f"data.stores=[{labelled_store}]",
                 "task.label=sex", "--train-subjects", "1,900", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no size can run: 1 subjects cannot hold all 2 classes; 900 training subjects asked" in err
    assert not (tmp_path / "x" / "curve").exists()
