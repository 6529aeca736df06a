"""From per-clip predictions to per-subject metrics with 95 % bootstrap CIs, and the figures of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

from neurostorm.tasks.metrics import (
    bootstrap,
    chance_level,
    classification_metrics,
    per_subject,
    probabilities,
    regression_metrics,
)

UNDEFINED = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}  # a metric with no value


def scored_units(kind: str, subjects: np.ndarray, outputs: np.ndarray, targets: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What metrics are computed over: subjects (clip outputs averaged per subject) for subject labels, or
    clips for task state, whose label changes within a subject. Returns (subject of each unit, outputs, y)."""
    if kind == "task_state":
        return np.asarray(subjects).astype(str), np.asarray(outputs, dtype=np.float64), np.asarray(targets)
    return per_subject(subjects, outputs, targets)


def unit_metrics(kind: str, n_classes: int, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    if kind == "regression":
        return regression_metrics(outputs[:, 0], targets)
    return classification_metrics(outputs, targets, n_classes)


def subject_metrics(kind: str, n_classes: int, subjects: np.ndarray, outputs: np.ndarray, targets: np.ndarray
                    ) -> dict[str, float]:
    """Point metrics over the scored units (subjects, or clips for task state)."""
    _, out, y = scored_units(kind, subjects, outputs, targets)
    return unit_metrics(kind, n_classes, out, y)


def predictions_frame(subjects, run_ids, starts, outputs: np.ndarray, targets: np.ndarray) -> pd.DataFrame:
    """One row per clip: subject, run_id, start, y and output columns out_0..out_{K-1}."""
    frame = pd.DataFrame({"subject": np.asarray(subjects).astype(str), "run_id": run_ids, "start": starts,
                          "y": targets})
    for k in range(outputs.shape[1]):
        frame[f"out_{k}"] = outputs[:, k]
    return frame


class ScoredUnits:
    """The scored units of a predictions frame (subjects, or clips for task state), grouped by subject so
    that a bootstrap resample of subjects takes all their units."""

    def __init__(self, kind: str, n_classes: int, frame: pd.DataFrame) -> None:
        outputs = frame[[c for c in frame.columns if c.startswith("out_")]].to_numpy()
        owners, self.outputs, self.y = scored_units(kind, frame["subject"].to_numpy(), outputs,
                                                    frame["y"].to_numpy())
        self.kind, self.n_classes, self.subjects = kind, n_classes, np.unique(owners)
        self.units_of = {s: np.flatnonzero(owners == s) for s in self.subjects}

    def metrics(self, subjects: np.ndarray) -> dict[str, float]:
        """Point metrics over the units of ``subjects`` (repeats allowed); {} where undefined (one class)."""
        rows = np.concatenate([self.units_of[s] for s in subjects])
        if self.kind != "regression" and len(np.unique(self.y[rows])) < 2:
            return {}
        return unit_metrics(self.kind, self.n_classes, self.outputs[rows], self.y[rows])


def metrics_with_ci(kind: str, n_classes: int, frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """{metric: {value, ci_low, ci_high}}, the CI from resampling subjects (with all their scored units),
    plus chance levels for classification."""
    units = ScoredUnits(kind, n_classes, frame)
    result = bootstrap(lambda idx: units.metrics(units.subjects[idx]), len(units.subjects), n_boot=n_boot,
                       seed=seed)
    result["n_subjects"] = int(len(units.subjects))
    result["n_clips"] = int(len(frame))
    if kind != "regression":
        result["chance"] = chance_level(units.y, n_classes)
        decided = probabilities(units.outputs).argmax(1)
        if len(np.unique(units.y)) > 1 and len(np.unique(decided)) == 1:
            result["note"] = (f"every test {'clip' if kind == 'task_state' else 'subject'} is decided as class "
                              f"{int(decided[0])}: balanced accuracy is at chance by construction while AUROC only "
                              "ranks the scores; the decision threshold lies outside their range (e.g. a strongly "
                              "regularised model that predicts the training prior)")
    return result


def per_site(kind: str, n_classes: int, frame: pd.DataFrame, site_of: dict[str, str]) -> dict[str, dict]:
    """:func:`metrics_with_ci` of the test subjects of each site (``site_of``: subject → site)."""
    sites = frame["subject"].astype(str).map(site_of).fillna("unknown")
    return {str(site): metrics_with_ci(kind, n_classes, part) for site, part in frame.groupby(sites)}


def paired_difference(kind: str, n_classes: int, frame_a: pd.DataFrame, frame_b: pd.DataFrame, metric: str,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """``metric`` of A minus that of B on the same test subjects, {value, ci_low, ci_high}: each bootstrap
    draw resamples subjects once and scores both methods on that draw (a paired bootstrap)."""
    a, b = ScoredUnits(kind, n_classes, frame_a), ScoredUnits(kind, n_classes, frame_b)
    if not np.array_equal(a.subjects, b.subjects):
        raise ValueError("paired difference needs the same test subjects in both prediction tables")

    def difference(idx: np.ndarray) -> dict[str, float]:
        first, second = a.metrics(a.subjects[idx]), b.metrics(a.subjects[idx])
        return {metric: first[metric] - second[metric]} if metric in first and metric in second else {}

    return bootstrap(difference, len(a.subjects), n_boot=n_boot, seed=seed).get(metric, dict(UNDEFINED))


def plot_run_figures(kind: str, n_classes: int, frame: pd.DataFrame, classes: list[str] | None,
                     log_csv: Path | None, out_dir: Path) -> list[Path]:
    """Loss curves (from the CSV log), ROC and confusion matrix, or predicted-vs-true, as PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if log_csv is not None and log_csv.exists():
        written.append(plot_loss_curves(log_csv, out_dir / "loss_curves.png"))
    outputs = frame[[c for c in frame.columns if c.startswith("out_")]].to_numpy()
    _, out, y = scored_units(kind, frame["subject"].to_numpy(), outputs, frame["y"].to_numpy())
    if kind == "regression":
        written.append(_scatter(out[:, 0], y, out_dir / "predicted_vs_true.png"))
    else:
        written += [_roc(probabilities(out), y.astype(int), n_classes, classes, out_dir / "roc.png"),
                    _confusion(probabilities(out).argmax(1), y.astype(int), n_classes, classes,
                               out_dir / "confusion_matrix.png")]
    return written


def plot_loss_curves(log_csv: Path, path: Path) -> Path:
    """Train and validation loss per epoch from a run's CSV log (and the mean predictor's, if logged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    loss_figure(pd.read_csv(log_csv)).savefig(path, dpi=120)
    return path


def loss_figure(log: pd.DataFrame) -> Figure:
    """Loss per epoch (1-based, whole-epoch ticks) from a CSV log; the legend beside the axes."""
    fig = Figure(figsize=(7.5, 4), layout="constrained")
    ax = fig.subplots()
    epochs = 1 + log["epoch"].dropna().astype(int).max() if "epoch" in log and log["epoch"].notna().any() else 1
    for column, label in (("train_loss_epoch", "train loss"), ("val_loss", "val loss"),
                          ("val_loss_mean_predictor", "val loss of predicting\nthe clip mean")):
        if column in log:
            rows = log[["epoch", column]].dropna().groupby("epoch")[column].mean()
            ax.plot(rows.index + 1, rows.to_numpy(), marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="loss", title="Loss per epoch", xlim=(0.5, epochs + 0.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.legend(loc="outside right upper")  # beside the axes, never over a point
    return fig


def _scatter(predicted: np.ndarray, true: np.ndarray, path: Path) -> Path:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(true, predicted, s=18, alpha=0.8)
    lo, hi = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="identity")
    r = np.corrcoef(true, predicted)[0, 1] if predicted.std() > 0 else 0.0
    ax.set(xlabel="true", ylabel="predicted (subject mean)", title=f"Predicted vs true (r = {r:.2f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _roc(prob: np.ndarray, y: np.ndarray, n_classes: int, classes: list[str] | None, path: Path) -> Path:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    names = classes or [str(k) for k in range(n_classes)]
    for k in ([1] if n_classes == 2 else range(n_classes)):
        if 0 < (y == k).sum() < len(y):
            fpr, tpr, _ = skm.roc_curve(y == k, prob[:, k])
            ax.plot(fpr, tpr, label=f"{names[k]} (AUC {skm.auc(fpr, tpr):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _confusion(predicted: np.ndarray, y: np.ndarray, n_classes: int, classes: list[str] | None, path: Path) -> Path:
    matrix = skm.confusion_matrix(y, predicted, labels=list(range(n_classes)))
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    names = classes or [str(k) for k in range(n_classes)]
    ax.set_xticks(range(n_classes), names, rotation=45, ha="right")
    ax.set_yticks(range(n_classes), names)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def rank_histogram(ranks: np.ndarray, n_candidates: int, path: Path) -> Path:
    """Histogram of the rank of the right item among ``n_candidates`` (1 = retrieved first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.hist(ranks, bins=np.arange(1, n_candidates + 2) - 0.5, rwidth=0.85)
    ax.axhline(len(ranks) / n_candidates, color="grey", ls="--", lw=1, label="chance")
    ax.set(xlabel="rank of the right stimulus", ylabel="clips", title=f"Retrieval ranks among {n_candidates}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
