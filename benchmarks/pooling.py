"""Run-level pooling of the tiny encoder against FC + linear on the demo's simulated cohort.

``python -m benchmarks.pooling [--subjects 48] [--out DIR]`` simulates the default demo's resting cohort
(48 subjects, 2 runs of 24 frames at TR 2 s, 4 mm, three sites, seed 0), preprocesses it, pretrains the
tiny STORM model as the default demo does, and for sex, age, phenotype score and diagnosis scores every
pooling (mean, mean_std, cov, attention) of the random-initialised and of the pretrained encoder beside
FC + linear (Power-264). Protocol: 5 folds by subject (stratified for classes; sites are mixed across
folds, unlike ``data.cv_folds``, since 3 sites cannot make 5 folds); inside each fold a validation share of
the training subjects; every method fitted on train and scored on validation (the choice of a pooling
reads these figures only), then refitted on train + validation and scored on the fold's test subjects.
Test predictions pooled over folds give each subject one prediction: headline metric with its 95 %
bootstrap CI over subjects and the paired difference against FC + linear. Prints the table and writes
``pooling.csv`` and ``pooling.md`` into OUT (the current folder without ``--out``; the cohort and runs then
go to a temporary folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import study
from neurostorm import build_model, load_encoder
from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.roi import extract_rois
from neurostorm.data.simulate import CohortConfig, simulate_cohort
from neurostorm.data.store import Store
from neurostorm.evaluation.scores import metrics_with_ci, paired_difference, predictions_frame
from neurostorm.evaluation.target import Target
from neurostorm.models.linear import fit_linear, linear_outputs
from neurostorm.tasks import task_family
from neurostorm.train.config import ExperimentConfig, load_config
from neurostorm.train.pooling import RunPooling, RunSeries, attention_outputs, fit_attention, run_series
from neurostorm.train.run import pretrain
from neurostorm.workflows.finetune import cv_splits

FAMILIES = {"sex": "classification", "age": "regression", "score": "regression", "diagnosis": "classification"}
HEADLINE = {"classification": "balanced_accuracy", "regression": "pearson_r"}
POOLINGS = ("mean", "mean_std", "cov", "clip_attention")


def _subset(series: RunSeries, keep: set[str]) -> RunSeries:
    return series.select(i for i, subject in enumerate(series.subjects) if subject in keep)


def _targets(manifest: pd.DataFrame, label: str, target: Target, run_ids: list[str]) -> tuple[np.ndarray, int]:
    column = manifest.set_index("run_id")[label]
    if target.values:
        return column.loc[run_ids].to_numpy(float), 1
    classes = sorted(column.astype(str).unique())
    return np.array([classes.index(str(v)) for v in column.loc[run_ids]]), len(classes)


def _fit_predict(pooling: str, train: RunSeries, y_train: np.ndarray, val: RunSeries, y_val: np.ndarray,
                 test: RunSeries, target: Target, n_classes: int) -> np.ndarray:
    if pooling == "clip_attention":
        model, fitted = fit_attention(train, y_train, val, y_val, target.values, n_classes)
        return attention_outputs(model, fitted, test, target.values)
    features = RunPooling(pooling).fit(train)
    linear = fit_linear(features.transform(train), y_train, np.array(train.subjects), target.estimator)
    return linear_outputs(linear, features.transform(test), target.estimator, n_classes)


def _fc_series(roi: Path, store: Store) -> RunSeries:
    """FC + linear through the same code: each run's Fisher-z upper triangle as its one 'clip'."""
    with np.load(roi / "fc.npz") as fc:
        matrices, run_ids = fc["fisher_z"], fc["run_id"].tolist()
    upper = np.triu_indices(matrices.shape[1], k=1)
    subject = store.manifest.set_index("run_id")["subject"].astype(str)
    series = RunSeries()
    for run_id, matrix in zip(run_ids, matrices, strict=True):
        row = matrix[upper][None].astype(np.float32)
        series.add(run_id, subject[run_id], row, row, row)
    return series


def _frame(series: RunSeries, outputs: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    return predictions_frame(np.array(series.subjects), np.array(series.run_ids), np.zeros(len(y), int), outputs, y)


def evaluate(methods: dict[str, RunSeries], store: Store, folds: list[dict], label: str) -> pd.DataFrame:
    kind = FAMILIES[label]
    metric, target = HEADLINE[kind], task_family(kind).target
    rows, frames = [], {}
    for name, series in methods.items():
        pooling = "mean" if name == "FC + linear" else name.split(" ")[-1]  # FC: its one row per run as is
        val_scores, test_frames = [], []
        for fold in folds:
            parts = {k: _subset(series, set(fold[k])) for k in ("train", "val", "test")}
            y = {k: _targets(store.manifest, label, target, parts[k].run_ids)[0] for k in parts}
            n_classes = _targets(store.manifest, label, target, series.run_ids)[1]
            val_out = _fit_predict(pooling, parts["train"], y["train"], parts["val"], y["val"], parts["val"], target,
                                   n_classes)
            val_scores.append(metrics_with_ci(target, n_classes, _frame(parts["val"], val_out, y["val"]),
                                              n_boot=1)[metric]["value"])
            both = RunSeries()
            both.extend(parts["train"])
            both.extend(parts["val"])
            test_out = _fit_predict(pooling, both, np.concatenate([y["train"], y["val"]]), parts["val"], y["val"],
                                    parts["test"], target, n_classes)
            test_frames.append(_frame(parts["test"], test_out, y["test"]))
        frames[name] = pd.concat(test_frames, ignore_index=True)
        result = metrics_with_ci(target, n_classes, frames[name])[metric]
        rows.append({"family": label, "method": name, "metric": metric, "validation": float(np.nanmean(val_scores)),
                     "test": result["value"], "ci_low": result["ci_low"], "ci_high": result["ci_high"]})
    for row in rows:
        if row["method"] != "FC + linear":
            n_classes = _targets(store.manifest, label, target, methods["FC + linear"].run_ids)[1]
            difference = paired_difference(target, n_classes, frames[row["method"]], frames["FC + linear"], metric)
            row.update(vs_fc=difference["value"], vs_fc_low=difference["ci_low"], vs_fc_high=difference["ci_high"])
    return pd.DataFrame(rows)


def evaluate_families(methods: dict[str, RunSeries], store: Store) -> pd.DataFrame:
    """:func:`evaluate` for every label of FAMILIES, 5 folds by subject (sites mixed), validation share 0.25."""
    tables = []
    for label in FAMILIES:
        subjects = store.manifest.astype({"subject": str}).drop(columns="site")  # folds by subject
        stratify = label if task_family(FAMILIES[label]).stratified else None
        tables.append(evaluate(methods, store, cv_splits(subjects, 5, 0.25, seed=0, stratify=stratify), label))
    return pd.concat(tables, ignore_index=True)


def demo_rest_store(out: Path, subjects: int = 48, cohort: dict | None = None, fill_floor: float | None = None,
                    name: str = "store") -> Path:
    """The default demo's resting cohort (2 runs of 24 frames at TR 2 s, 4 mm, three sites, seed 0; other
    ``CohortConfig`` settings in ``cohort``), preprocessed onto the 4 mm grid in OUT/NAME. The cohort is
    simulated into OUT/bids (OUT/bids-<settings> with ``cohort``) unless it is already there."""
    settings = cohort or {}
    bids = out / "-".join(["bids", *(f"{k}{v}" for k, v in sorted(settings.items()))])
    if not (bids / "participants.tsv").exists():
        simulate_cohort(bids, CohortConfig(subjects=subjects, runs=2, n_frames=24, voxel_mm=4.0, seed=0, **settings))
    runs = sorted(bids.glob("sub-*/func/*task-rest*_bold.nii.gz"))
    preprocess(runs, out / name, PreprocessConfig(grid="mni152-fsl-4mm-48", fill_floor=fill_floor), workers=2,
               labels=bids / "participants.tsv", progress=False)
    return out / name


def demo_pretraining(store: Path, *overrides: str) -> ExperimentConfig:
    """The tiny model's STORM pretraining as the default demo runs it, on ``store``."""
    return load_config("tiny", ["trainer.seed=0", "data.split_fractions=[0.6,0.2,0.2]", "optim.lr=3e-3",
                                "optim.epochs=3", "trainer.progress=false",
                                f"data.stores=[{{path: {store}, max_clips: 200}}]", *overrides])


def pretrain_as_demo(store: Path, out: Path, *overrides: str) -> Path:
    """STORM pretraining of the tiny model as the default demo runs it; returns the model folder."""
    pretrain(demo_pretraining(store, *overrides), out)
    return out / "model"


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--subjects", type=int, default=48)

    with study(__doc__, options) as (args, out, destination):
        demo_rest_store(out, args.subjects)
        pretrain_as_demo(out / "store", out / "pretrain")
        extract_rois(str(out / "store"), "power264", out / "roi", progress=False)
        store = Store(out / "store")
        torch.manual_seed(0)
        encoders = {"random-init": build_model("neurostorm-tiny"),
                    "pretrained": load_encoder(out / "pretrain" / "model")}
        methods = {"FC + linear": _fc_series(out / "roi", store)}
        for init, encoder in encoders.items():
            series = run_series(encoder, store, store.manifest, length=20)
            methods.update({f"{init} {pooling}": series for pooling in POOLINGS})
        table = evaluate_families(methods, store)
        table.to_csv(destination / "pooling.csv", index=False)
        text = markdown(table)
        (destination / "pooling.md").write_text(text + "\n")
        print(text)
        best = table[table.method.str.startswith("pretrained")].groupby("method")["validation"].mean().idxmax()
        print(f"\nbest pretrained pooling by mean validation score over the four labels: {best.split(' ')[-1]}")
        print(f"{args.subjects} subjects")


def markdown(table: pd.DataFrame) -> str:
    lines = ["| label | method | validation | test [95 % CI] | − FC + linear [95 % CI] |", "|---|---|---|---|---|"]
    for row in table.to_dict("records"):
        difference = "" if row["method"] == "FC + linear" else \
            f"{row['vs_fc']:+.3f} [{row['vs_fc_low']:+.3f}, {row['vs_fc_high']:+.3f}]"
        lines.append(f"| {row['family']} ({row['metric']}) | {row['method']} | {row['validation']:.3f} | "
                     f"{row['test']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {difference} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
