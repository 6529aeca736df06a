"""Linear probe: a frozen encoder's clip embeddings, extracted once and cached, then scikit-learn.

Logistic regression (classification) or ridge regression (targets in their own units) on standardised
embeddings, the regularisation chosen by cross-validation over train + val clips grouped by subject (no
subject in two folds); evaluated per subject on the test split like every other mode.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurostorm.data.store import write_json_atomic, write_npz_atomic
from neurostorm.tasks.evaluation import metrics_with_ci, plot_run_figures, predictions_frame
from neurostorm.train.config import ExperimentConfig
from neurostorm.train.data import LabelledClips, fit_to_model, over_clips


def embed_split(encoder, data: LabelledClips, split: str) -> dict[str, np.ndarray]:
    """Pooled embeddings (N, D) of every clip of a split, with subject, run_id, start and y per clip."""
    encoder.eval()
    return over_clips(lambda x: encoder.encode(fit_to_model(x, encoder.config.img_size)), data.loader(split))


def cached_embeddings(encoder, data: LabelledClips, run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    path = run_dir / "embeddings.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            return {split: {k.split("/", 1)[1]: saved[k] for k in saved.files if k.startswith(split + "/")}
                    for split in ("train", "val", "test")}
    out = {split: embed_split(encoder, data, split) for split in ("train", "val", "test")}
    write_npz_atomic(path, {f"{split}/{k}": v for split, cols in out.items() for k, v in cols.items()})
    return out


def linear_probe(config: ExperimentConfig, run_dir: Path) -> dict:
    from neurostorm.train.run import initial_encoder

    data = LabelledClips(config, run_dir)
    encoder = initial_encoder(config)
    start = time.perf_counter()
    emb = cached_embeddings(encoder, data, run_dir)
    fit = {k: np.concatenate([emb["train"][k], emb["val"][k]]) for k in ("output", "subject", "y")}
    n_folds = min(5, len(np.unique(fit["subject"])))
    if config.task.kind == "regression":
        model, grid = make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": np.logspace(-2, 5, 15)}
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(
            max_iter=2000, class_weight="balanced" if config.task.class_weights else None))
        grid = {"logisticregression__C": np.logspace(-4, 2, 13)}
    search = GridSearchCV(model, grid, cv=GroupKFold(n_folds))
    search.fit(fit["output"], fit["y"], groups=fit["subject"])
    test = emb["test"]
    if config.task.kind == "regression":
        outputs = search.predict(test["output"])[:, None]
    else:
        scores = search.decision_function(test["output"])
        outputs = scores[:, None] if scores.ndim == 1 else scores
    n_classes = 1 if config.task.kind == "regression" else len(data.classes)
    frame = predictions_frame(test["subject"], test["run_id"], test["start"], outputs, test["y"])
    frame.to_csv(run_dir / "predictions.csv", index=False)
    task = {"kind": config.task.kind, "label": config.task.label, "classes": data.classes, "n_classes": n_classes,
            "mode": "probe", "best_params": {k: float(v) for k, v in search.best_params_.items()},
            "train_seconds": time.perf_counter() - start,
            "trainable_parameters": int(np.size(search.best_estimator_[-1].coef_) +
                                        np.size(search.best_estimator_[-1].intercept_))}
    metrics = metrics_with_ci(config.task.kind, n_classes, frame)
    metrics["task"] = task
    write_json_atomic(run_dir / "metrics.json", json.loads(json.dumps(metrics, default=float)))
    plot_run_figures(config.task.kind, n_classes, frame, data.classes, None, run_dir / "figures")
    return metrics
