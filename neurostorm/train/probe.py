"""Probes of a frozen encoder, and the FC + linear baseline.

Probe: a frozen encoder's clip embeddings (the mean last-stage token, or with ``probe_stage`` the mean token
of that stage), extracted once and cached; ``probe=attention`` or ``mlp`` trains a head over the clip's
tokens instead (:mod:`neurostorm.train.token_probe`). FC + linear: the upper triangle of each run's Fisher-z
FC. Either way a regularised linear model (:func:`neurostorm.models.linear.fit_linear`) is
fitted on train + val (regularisation by subject-grouped CV) and evaluated per subject on the test split,
like every other mode. A standardising head takes its statistics from the same embeddings (:func:`fit_head_scale`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neurostorm.data.files import write_npz_atomic
from neurostorm.errors import InputError
from neurostorm.evaluation.report import write_scored_predictions
from neurostorm.evaluation.scores import predictions_frame
from neurostorm.evaluation.target import Target
from neurostorm.models.baselines.fc_linear import upper_triangle
from neurostorm.models.encoder import count_parameters
from neurostorm.models.linear import fit_linear, linear_outputs, linear_parameters
from neurostorm.train.config import ExperimentConfig
from neurostorm.train.data import LabelledClips, fit_to_model, over_clips, sites_of
from neurostorm.train.pooling import RunPooling, RunSeries, attention_outputs, fit_attention, run_series
from neurostorm.train.token_probe import fit_token_probe
from neurostorm.train.trainer import initial_encoder

SPLITS = ("train", "val", "test")


def embed_split(encoder, data: LabelledClips, split: str) -> dict[str, np.ndarray]:
    """Pooled embeddings (N, D) of every clip of a split, with subject, run_id, start and y per clip."""
    encoder.eval()
    return over_clips(lambda x: encoder.encode(fit_to_model(x, encoder.config.img_size)), data.loader(split))


def tokens_split(encoder, data: LabelledClips, split: str, stage: int) -> dict[str, np.ndarray]:
    """The tokens (N, L, C) of ``stage`` (1-based; L = positions × frames) of every clip of a split, with
    subject, run_id, start and y per clip."""
    encoder.eval()

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return encoder.stage_tokens(fit_to_model(x, encoder.config.img_size), stage).flatten(1, 4)

    return over_clips(tokens, data.loader(split))


FIXED_FEATURES = ("embeddings.npz", "fc_features.npz")  # a probe's or FC + linear's rows, per split


def read_split_features(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """A features file of a run folder: per split, ``output`` rows with ``subject``, ``run_id``, ``start``,
    ``y``."""
    with np.load(path, allow_pickle=False) as saved:
        return {split: {k.split("/", 1)[1]: saved[k] for k in saved.files if k.startswith(split + "/")}
                for split in SPLITS}


def _cached(path: Path, compute) -> dict[str, dict[str, np.ndarray]]:
    if path.exists():
        return read_split_features(path)
    out = {split: compute(split) for split in SPLITS}
    write_npz_atomic(path, {f"{split}/{k}": v for split, cols in out.items() for k, v in cols.items()})
    return out


def cached_features(encoder, data: LabelledClips, run_dir: Path, stage: int | None = None
                    ) -> dict[str, dict[str, np.ndarray]]:
    """Per split, the frozen encoder's clip embeddings (``stage`` None: RUN_DIR/embeddings.npz) or a stage's
    tokens (RUN_DIR/tokens-stage<s>.npz), computed once and read back after."""
    if stage is None:
        return _cached(run_dir / "embeddings.npz", lambda split: embed_split(encoder, data, split))
    return _cached(run_dir / f"tokens-stage{stage}.npz", lambda split: tokens_split(encoder, data, split, stage))


def fit_head_scale(head: nn.Module, encoder, data: LabelledClips) -> None:
    """Fit ``head.scale`` (a :class:`~neurostorm.models.heads.Standardise`) to the embeddings of the training
    clips by the encoder as training starts (validation subjects unread)."""
    training = encoder.training
    embeddings = embed_split(encoder, data, "train")["output"]  # (N clips, D)
    encoder.train(training)
    head.scale.fit(torch.as_tensor(embeddings))


def _check_classes(y: np.ndarray, config: ExperimentConfig, data: LabelledClips) -> None:
    if not data.target.values and len(np.unique(y)) < 2:
        raise InputError(data.store.location, f"the training subjects of this split hold one class of "
                                              f"{config.task.label!r} only: nothing to fit")


def run_level_fit(config: ExperimentConfig, data: LabelledClips) -> tuple[dict, np.ndarray, dict]:
    """``pooling`` mean_std, cov or attention: one row per run from every clip of it (:mod:`pooling`), a
    linear model (or the attention head) fitted on the train + val runs; (test rows, test outputs, task info)."""
    encoder, target = initial_encoder(config), data.target
    n_classes = 1 if target.values else len(data.classes)
    series, targets = {}, {}
    for split in SPLITS:
        dataset = data.datasets[split]
        series[split] = run_series(encoder, data.store, dataset.runs, config.data.sequence_length,
                                   config.data.stride, config.data.batch_size)
        label_of = dict(zip(dataset.runs["run_id"], dataset.targets(), strict=True))
        targets[split] = np.array([label_of[r] for r in series[split].run_ids])
    test = series["test"]
    if config.pooling == "clip_attention":
        if config.data.harmonize != "none":
            raise InputError("config", "pooling=clip_attention learns from every frame of a run; data.harmonize "
                                       "harmonises fixed features: use pooling mean, mean_std or cov")
        model, fitted = fit_attention(series["train"], targets["train"], series["val"], targets["val"],
                                      target.values, n_classes, seed=config.trainer.seed)
        outputs = attention_outputs(model, fitted, test, target.values)
        info = {"trainable_parameters": count_parameters(model)}
    else:
        fit = RunSeries()
        fit.extend(series["train"])
        fit.extend(series["val"])
        pooling = RunPooling(config.pooling).fit(fit)  # cov: PCA of the training runs' frames only
        y = np.concatenate([targets["train"], targets["val"]])
        _check_classes(y, config, data)
        rows, info = _harmonized(config, data, {"fit": pooling.transform(fit), "test": pooling.transform(test)},
                                 {"fit": fit.subjects, "test": test.subjects})
        linear = fit_linear(rows["fit"], y, np.array(fit.subjects), target.estimator,
                            balanced=config.task.class_weights)
        outputs = linear_outputs(linear, rows["test"], target.estimator, n_classes)
        info.update(best_params={k: float(v) for k, v in linear.best_params.items()},
                    trainable_parameters=linear_parameters(linear))
    skipped = [r for split in SPLITS for r in series[split].skipped]
    rows = {"subject": np.array(test.subjects), "run_id": np.array(test.run_ids),
            "start": np.zeros(len(test.run_ids), dtype=int), "y": targets["test"]}
    return rows, outputs, {**info, "pooling": config.pooling, "skipped_runs": skipped}


def linear_probe(config: ExperimentConfig, run_dir: Path, target: Target) -> dict:
    """``mode=probe`` on an encoder, or the ``fc-linear`` model; writes the run folder, returns the metrics."""
    data = LabelledClips(config, run_dir, target)
    start = time.perf_counter()
    reads_tokens = config.probe_reads_tokens
    if reads_tokens and (data.input == "fc" or config.pooling != "mean"):
        what = f"{config.model.name} reads connectivity matrices" if data.input == "fc" else \
            f"pooling={config.pooling} pools whole runs: use one or the other"
        raise InputError("config", f"probe={config.probe} and probe_stage read each clip's tokens; {what}")
    if config.pooling != "mean":
        if data.input == "fc" or target.per_clip:
            raise InputError("config", f"pooling={config.pooling} gives one row per run: it is for an encoder's "
                                       "probe of subject labels (classification or regression)")
        test, outputs, info = run_level_fit(config, data)
        return _finish(config, data, run_dir, test, outputs, {"mode": "probe", **info}, start)
    if data.input == "fc":
        features = _cached(run_dir / "fc_features.npz", lambda split: over_clips(upper_triangle, data.loader(split)))
        mode = "fc-linear"
    elif reads_tokens:
        encoder = initial_encoder(config)
        stage = probe_stage(config, encoder)
        features, mode = cached_features(encoder, data, run_dir, stage), "probe"
        if config.probe != "linear":
            return _token_head(config, data, run_dir, features, stage, start)
        features = {split: {**cols, "output": cols["output"].mean(1)} for split, cols in features.items()}
    else:
        features, mode = cached_features(initial_encoder(config), data, run_dir), "probe"
    fit = {k: np.concatenate([features["train"][k], features["val"][k]]) for k in ("output", "subject", "y")}
    n_classes = 1 if target.values else len(data.classes)
    _check_classes(fit["y"], config, data)
    test = features["test"]
    if data.input == "fc":  # the FC matrices were harmonised as the data module read them
        rows, info = {"fit": fit["output"], "test": test["output"]}, _harmonization(data.harmonization)
    else:
        rows, info = _harmonized(config, data, {"fit": fit["output"], "test": test["output"]},
                                 {"fit": fit["subject"], "test": test["subject"]})
        info.update(probe="linear", probe_stage=config.probe_stage)
    linear = fit_linear(rows["fit"], fit["y"], fit["subject"], target.estimator, balanced=config.task.class_weights)
    outputs = linear_outputs(linear, rows["test"], target.estimator, n_classes)
    info.update(mode=mode, best_params={k: float(v) for k, v in linear.best_params.items()},
                trainable_parameters=linear_parameters(linear))
    return _finish(config, data, run_dir, test, outputs, info, start)


def probe_stage(config: ExperimentConfig, encoder) -> int:
    """``probe_stage``, or the encoder's last stage; one the encoder does not have is the config's error."""
    stages = len(getattr(encoder, "layers", ()))
    stage = config.probe_stage or stages
    if not stages or stage > stages:
        widths = ", ".join(map(str, encoder.config.stage_dims())) if stages else ""
        known = f"its stages are 1 to {stages} (widths {widths})" if stages else "it has no token stages"
        raise InputError("probe_stage", f"{config.model.name} has no stage {stage}: {known}")
    return stage


def _token_head(config: ExperimentConfig, data: LabelledClips, run_dir: Path, tokens: dict, stage: int,
                start: float) -> dict:
    """``probe=attention`` or ``mlp`` on a stage's cached tokens: chosen on validation, scored on test."""
    if config.data.harmonize != "none":
        raise InputError("config", f"probe={config.probe} learns from every token of a clip; data.harmonize "
                                   "harmonises fixed features: use probe=linear")
    if not len(tokens["val"]["y"]):
        raise InputError("config", f"probe={config.probe} chooses its learning rate on validation subjects: the "
                                   "split has none (data.split_fractions)")
    _check_classes(tokens["train"]["y"], config, data)
    n_classes = 1 if data.target.values else len(data.classes)
    fitted = fit_token_probe(config.probe, tokens["train"], tokens["val"], data.target, n_classes,
                             steps=config.probe_steps, seed=config.trainer.seed)
    test = tokens["test"]
    info = {"mode": "probe", "probe": config.probe, "probe_stage": stage,
            "tokens_per_clip": int(test["output"].shape[1]), "learning_rate": fitted.learning_rate,
            "weight_decay": fitted.weight_decay, "step": fitted.step,
            "trainable_parameters": count_parameters(fitted.head)}
    return _finish(config, data, run_dir, test, fitted.outputs(test["output"]), info, start)


def _harmonized(config: ExperimentConfig, data: LabelledClips, rows: dict[str, np.ndarray], subjects: dict
                ) -> tuple[dict[str, np.ndarray], dict]:
    """The ``fit`` (train + val) and ``test`` feature rows, ComBat-harmonised by site when ``data.harmonize``
    asks (fitted on the ``fit`` rows only); with the task info that says so."""
    if config.data.harmonize == "none":
        return rows, {}
    harmonised, summary = data.harmonize(rows, subjects, fit_on=("fit",))
    return harmonised, _harmonization(summary)


def _harmonization(summary: dict | None) -> dict:
    return {"harmonization": summary} if summary else {}


def _finish(config: ExperimentConfig, data: LabelledClips, run_dir: Path, test: dict, outputs: np.ndarray,
            info: dict, start: float) -> dict:
    """Predictions, metrics with CIs and figures of a probe's test rows; returns the metrics."""
    frame = predictions_frame(test["subject"], test["run_id"], test["start"], outputs, test["y"])
    task = {"kind": config.task.kind, "target": data.target.record(), "label": config.task.label,
            "classes": data.classes, "n_classes": 1 if data.target.values else len(data.classes), **info,
            "train_seconds": time.perf_counter() - start}
    return write_scored_predictions(run_dir, frame, task, sites_of(data.store) if config.data.test_sites else None)
