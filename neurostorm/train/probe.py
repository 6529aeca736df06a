"""Linear models on fixed features: the linear probe of a frozen encoder, and the FC + linear baseline.

Probe: a frozen encoder's clip embeddings, extracted once and cached. FC + linear: the upper triangle of each
run's Fisher-z FC. Either way a regularised linear model (:func:`neurostorm.models.linear.fit_linear`) is
fitted on train + val (regularisation by subject-grouped CV) and evaluated per subject on the test split,
like every other mode.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from neurostorm.data.store import write_json_atomic, write_npz_atomic
from neurostorm.errors import InputError
from neurostorm.models.baselines.fc_linear import upper_triangle
from neurostorm.models.linear import fit_linear, linear_outputs, linear_parameters
from neurostorm.tasks.evaluation import metrics_with_ci, plot_run_figures, predictions_frame
from neurostorm.train.config import ExperimentConfig
from neurostorm.train.data import LabelledClips, fit_to_model, over_clips

SPLITS = ("train", "val", "test")


def embed_split(encoder, data: LabelledClips, split: str) -> dict[str, np.ndarray]:
    """Pooled embeddings (N, D) of every clip of a split, with subject, run_id, start and y per clip."""
    encoder.eval()
    return over_clips(lambda x: encoder.encode(fit_to_model(x, encoder.config.img_size)), data.loader(split))


def cached_embeddings(encoder, data: LabelledClips, run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    path = run_dir / "embeddings.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            return {split: {k.split("/", 1)[1]: saved[k] for k in saved.files if k.startswith(split + "/")}
                    for split in SPLITS}
    out = {split: embed_split(encoder, data, split) for split in SPLITS}
    write_npz_atomic(path, {f"{split}/{k}": v for split, cols in out.items() for k, v in cols.items()})
    return out


def linear_probe(config: ExperimentConfig, run_dir: Path) -> dict:
    """``mode=probe`` on an encoder, or the ``fc-linear`` model; writes the run folder, returns the metrics."""
    from neurostorm.train.run import initial_encoder

    data = LabelledClips(config, run_dir)
    start = time.perf_counter()
    if data.input == "fc":
        features = {split: over_clips(upper_triangle, data.loader(split)) for split in SPLITS}
        mode = "fc-linear"
    else:
        features, mode = cached_embeddings(initial_encoder(config), data, run_dir), "probe"
    fit = {k: np.concatenate([features["train"][k], features["val"][k]]) for k in ("output", "subject", "y")}
    kind = config.task.kind
    n_classes = 1 if kind == "regression" else len(data.classes)
    if kind != "regression" and len(np.unique(fit["y"])) < 2:
        raise InputError(data.store.location, f"the training subjects of this split hold one class of "
                                              f"{config.task.label!r} only: nothing to fit")
    search = fit_linear(fit["output"], fit["y"], fit["subject"], kind, balanced=config.task.class_weights)
    test = features["test"]
    outputs = linear_outputs(search, test["output"], kind, n_classes)
    frame = predictions_frame(test["subject"], test["run_id"], test["start"], outputs, test["y"])
    frame.to_csv(run_dir / "predictions.csv", index=False)
    task = {"kind": kind, "label": config.task.label, "classes": data.classes, "n_classes": n_classes,
            "mode": mode, "best_params": {k: float(v) for k, v in search.best_params_.items()},
            "train_seconds": time.perf_counter() - start, "trainable_parameters": linear_parameters(search)}
    metrics = metrics_with_ci(kind, n_classes, frame)
    metrics["task"] = task
    write_json_atomic(run_dir / "metrics.json", json.loads(json.dumps(metrics, default=float)))
    plot_run_figures(kind, n_classes, frame, data.classes, None, run_dir / "figures")
    return metrics
