"""Fixed-feature methods over repeated random subject splits (``neurostorm compare --splits random:N``).

The protocol of the field's frozen-feature benchmarks (Brainmarks): the features of every labelled subject
are computed once (a frozen encoder's clip embeddings, or FC), then for each of N seeded draws a linear
model (regularisation chosen by subject-grouped cross-validation on the draw's training subjects) is fitted
on as many training subjects as the comparison's split has for training and validation together, and
scored on the rest per subject. Draws are stratified by the label for classification; a subject is always
whole on one side. The spread over draws says how much the figure moves with the split; the draws share
subjects, so it is not a confidence interval (the table keeps the subject-bootstrap CI of the fixed split
beside it).

OUT/random_splits.csv               one row per method and draw: every metric of the task
OUT/random_split_differences.csv    each method minus the first on the same draws: mean, sd, share above 0
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from neurostorm.data.files import write_csv_atomic
from neurostorm.data.splits import random_splits
from neurostorm.errors import InputError
from neurostorm.evaluation.scores import subject_metrics
from neurostorm.evaluation.target import Target
from neurostorm.models.linear import fit_linear, linear_outputs
from neurostorm.tasks.base import TaskFamily
from neurostorm.train.config import ExperimentConfig
from neurostorm.train.data import open_store, subjects_table
from neurostorm.train.probe import FIXED_FEATURES, SPLITS, read_split_features


def parse_splits(text: str) -> int:
    """``random:N`` → N."""
    match = re.fullmatch(r"random:(\d+)", text.strip())
    if not match or int(match.group(1)) < 1:
        raise InputError("--splits", f"expected random:N with N ≥ 1 (e.g. random:100), got {text!r}")
    return int(match.group(1))


def check_random_splits(config: ExperimentConfig, family: TaskFamily, n_splits: int) -> None:
    """Refuse, before anything runs, a comparison whose random splits would not mean what they say or
    cannot be drawn."""
    if not family.subject_labels or family.target is None:
        raise InputError("--splits", f"random subject splits score subject labels; {family.kind} is not one")
    if config.data.cv_folds > 1 or config.data.test_sites:
        raise InputError("--splits", "random splits replace cross-validation and leave-site-out splits: use one")
    if config.data.harmonize != "none":
        raise InputError("--splits", "data.harmonize fits ComBat on the comparison's own split; random splits "
                                     "would test on subjects it was fitted on: use data.harmonize=none")
    _draws(config, family, n_splits)


def _draws(config: ExperimentConfig, family: TaskFamily, n_splits: int) -> list[dict[str, list[str]]]:
    """The draws: as many training subjects as the comparison's split trains and validates on (its split
    file, or the share ``data.split_fractions`` gives before it is made)."""
    label, split_file = config.task.label, Path(config.data.split_file or "")
    table = subjects_table(open_store(config.data.stores[0].path, config))
    if label not in table:
        raise InputError(config.data.stores[0].path, f"no label column {label!r} in the store")
    labels = table.dropna(subset=[label]).set_index("subject")[label]
    if split_file.is_file():
        split = json.loads(split_file.read_text())
        train_size = len(split["train"]) + len(split["val"])
    else:
        train_size = len(labels) - max(1, int(round(config.data.split_fractions[2] * len(labels))))
    return random_splits(labels, n_splits, train_size, config.trainer.seed, stratify=family.stratified)


def _fixed_features(run: Path) -> dict[str, np.ndarray] | None:
    """The rows a fixed-feature run fitted and tested (every labelled subject), or None for other methods."""
    for name in FIXED_FEATURES:
        if (run / name).exists():
            parts = read_split_features(run / name)
            return {k: np.concatenate([parts[s][k] for s in SPLITS]) for k in ("output", "subject", "y")}
    return None


def score_random_splits(config: ExperimentConfig, family: TaskFamily, table: pd.DataFrame, out: Path,
                        n_splits: int) -> pd.DataFrame:
    """Score every method of ``table`` that learned from fixed features on ``n_splits`` random splits; writes
    the two CSVs under ``out`` and returns ``table`` with ``<headline>_random_mean``, ``_random_sd`` and
    ``random_splits`` columns (NaN for methods that train a network: not run on random splits)."""
    runs = {r["method"]: Path(r["run"]) for r in table.to_dict("records") if isinstance(r.get("run"), str)}
    features = {method: rows for method, run in runs.items() if (rows := _fixed_features(run)) is not None}
    if not features:
        raise InputError("--splits", "no method of the comparison learns from fixed features (a linear probe "
                                     "of a frozen encoder, fc-linear): nothing to score on random splits")
    draws = _draws(config, family, n_splits)
    records = []
    for method, rows in features.items():
        n_classes = json.loads((runs[method] / "metrics.json").read_text())["task"].get("n_classes", 1)
        records += [{"method": method, **r} for r in draw_scores(rows, draws, family.target, n_classes,
                                                                 config.task.class_weights)]
    scores = pd.DataFrame(records)
    write_csv_atomic(out / "random_splits.csv", scores)
    write_csv_atomic(out / "random_split_differences.csv", split_differences(scores, family.headline))
    by_method = scores.groupby("method")[family.headline]
    table = table.copy()
    table[f"{family.headline}_random_mean"] = table["method"].map(by_method.mean())
    table[f"{family.headline}_random_sd"] = table["method"].map(by_method.std(ddof=1))
    table["random_splits"] = table["method"].map(by_method.count())
    return table


def draw_scores(rows: dict[str, np.ndarray], draws: list[dict[str, list[str]]], target: Target, n_classes: int,
                balanced: bool = False) -> list[dict]:
    """Per draw, a linear model (strength by subject-grouped CV on the draw's training subjects) fitted on
    the training subjects' rows (``output`` (N, F) with ``subject`` and ``y``) and its metrics over the test
    subjects; one dict per draw with ``split`` (from 1) and the subject counts."""
    subjects = rows["subject"].astype(str)
    scores = []
    for k, draw in enumerate(draws, start=1):
        train, test = np.isin(subjects, draw["train"]), np.isin(subjects, draw["test"])
        linear = fit_linear(rows["output"][train], rows["y"][train], subjects[train], target.estimator,
                            balanced=balanced)
        outputs = linear_outputs(linear, rows["output"][test], target.estimator, n_classes)
        scores.append({"split": k, "train_subjects": len(draw["train"]), "test_subjects": len(draw["test"]),
                       **subject_metrics(target, n_classes, subjects[test], outputs, rows["y"][test])})
    return scores


def split_differences(scores: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each method's ``metric`` minus the first method's on the same draws: mean, sd and the share of draws
    where it is higher."""
    wide = scores.pivot(index="split", columns="method", values=metric)
    methods = list(dict.fromkeys(scores["method"]))
    rows = []
    for method in methods[1:]:
        difference = (wide[method] - wide[methods[0]]).dropna()
        rows.append({"a": method, "b": methods[0], "metric": metric, "mean": difference.mean(),
                     "sd": difference.std(ddof=1), "share_above_0": float((difference > 0).mean()),
                     "splits": len(difference)})
    return pd.DataFrame(rows, columns=["a", "b", "metric", "mean", "sd", "share_above_0", "splits"])
