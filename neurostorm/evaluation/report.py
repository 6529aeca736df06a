"""A run's test predictions scored and written: ``predictions.csv``, ``metrics.json`` and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from neurostorm.data.files import write_csv_atomic, write_json_atomic
from neurostorm.evaluation.figures import plot_run_figures
from neurostorm.evaluation.scores import metrics_with_ci, per_site
from neurostorm.evaluation.target import Target


def write_scored_predictions(run_dir: Path, frame: pd.DataFrame, task: dict, site_of: dict[str, str] | None = None,
                             log_csv: Path | None = None) -> dict:
    """Score a predictions table (:func:`~neurostorm.evaluation.scores.predictions_frame` columns) of the task
    ``task`` (``target`` as :meth:`Target.record` gives it, ``n_classes``, ``classes``, …):
    RUN_DIR/predictions.csv, metrics.json (with the task record, and per site where ``site_of`` maps subjects
    to sites) and figures (loss curves from ``log_csv`` when given); returns the metrics."""
    write_csv_atomic(run_dir / "predictions.csv", frame)
    target = Target.of_task(task)
    metrics = metrics_with_ci(target, task["n_classes"], frame)
    metrics["task"] = task
    if site_of:
        metrics["per_site"] = per_site(target, task["n_classes"], frame, site_of)
    write_json_atomic(run_dir / "metrics.json", json.loads(json.dumps(metrics, default=float)))
    plot_run_figures(target, task["n_classes"], frame, task["classes"], log_csv, run_dir / "figures")
    return metrics
