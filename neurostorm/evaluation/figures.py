"""The figures of a run: loss curves, ROC and confusion matrix or predicted vs true, rank histograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

from neurostorm.evaluation.metrics import probabilities
from neurostorm.evaluation.scores import scored_units
from neurostorm.evaluation.target import Target


def plot_run_figures(target: Target, n_classes: int, frame: pd.DataFrame, classes: list[str] | None,
                     log_csv: Path | None, out_dir: Path) -> list[Path]:
    """Loss curves (from the CSV log), ROC and confusion matrix, or predicted-vs-true, as PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if log_csv is not None and log_csv.exists():
        written.append(plot_loss_curves(log_csv, out_dir / "loss_curves.png"))
    outputs = frame[[c for c in frame.columns if c.startswith("out_")]].to_numpy()
    _, out, y = scored_units(target, frame["subject"].to_numpy(), outputs, frame["y"].to_numpy())
    if target.values:
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
