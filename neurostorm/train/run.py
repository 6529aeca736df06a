"""Training runs: pretrain; a label or task state trained and tested on one split (full / prompt / lora /
probe); evaluate, embed, predict — each writes a folder.

RUN_DIR/config.yaml       the full configuration
RUN_DIR/split.json        subjects per split (reused when present)
RUN_DIR/checkpoints/      Lightning checkpoints: best.ckpt (by validation) and last.ckpt (for --resume)
RUN_DIR/model/            exported weights: config.json + model.safetensors (+ head.safetensors, task.json)
RUN_DIR/logs/             metrics.csv and TensorBoard events
RUN_DIR/metrics.json      test metrics per subject, each {value, ci_low, ci_high}
RUN_DIR/predictions.csv   test predictions per clip (retrieval: queries.csv, each test query's rank)
RUN_DIR/figures/*.png     loss curves; ROC and confusion matrix, or predicted vs true
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from neurostorm.data.datasets import ClipDataset
from neurostorm.data.files import write_csv_atomic, write_json_atomic, write_npz_atomic
from neurostorm.data.store import Store, data_summary
from neurostorm.errors import InputError
from neurostorm.evaluation.figures import plot_loss_curves
from neurostorm.evaluation.metrics import per_subject, probabilities
from neurostorm.evaluation.report import write_scored_predictions
from neurostorm.evaluation.run_report import write_run_report
from neurostorm.evaluation.scores import metrics_with_ci, predictions_frame
from neurostorm.evaluation.target import Target
from neurostorm.models import (
    ClassificationHead,
    RegressionHead,
)
from neurostorm.models.encoder import NeuroSTORM
from neurostorm.models.lora import merge_lora
from neurostorm.models.weights import (
    load_pretrained,
    save_pretrained,
)
from neurostorm.train.config import ExperimentConfig, load_config
from neurostorm.train.data import (
    LabelledClips,
    PretrainClips,
    check_stores_fit,
    fit_to_model,
    make_loader,
    open_store,
    over_clips,
    sites_of,
)
from neurostorm.train.modules import AdaptModule, PretrainModule, adaptation_optim, prepare_adaptation
from neurostorm.train.pooling import RunPooling, RunSeries, run_series
from neurostorm.train.probe import fit_head_scale, linear_probe
from neurostorm.train.trainer import (
    build_named,
    check_model_init,
    initial_encoder,
    make_trainer,
    nothing_left_if_refused,
    resume_path,
    start_run,
)


def pretrain(config: ExperimentConfig, run_dir: str | Path, resume: bool = False) -> dict:
    """STORM masked pretraining over every store in ``config.data.stores``; exports RUN_DIR/model."""
    with nothing_left_if_refused(run_dir) as folder:
        return _pretrain(config, folder, resume)


def _pretrain(config: ExperimentConfig, run_dir: Path, resume: bool) -> dict:
    checkpoint = resume_path(run_dir, resume)
    check_model_init(config.model.init)
    run_dir = start_run(config, run_dir)
    name = config.model.name if "-mae-" in config.model.name else config.model.name.replace("neurostorm-",
                                                                                              "neurostorm-mae-")
    model = build_named(name, **config.model.overrides)
    check_stores_fit([s.path for s in config.data.stores], model.config.encoder.img_size, name)
    data = PretrainClips(config, run_dir)
    encoder_config = model.config.encoder  # z-scored clips have mean 0; a resumed run loads its own bias
    model.start_at_intensity(0.0 if encoder_config.voxel_zscore else data.mean_intensity(encoder_config.img_size))
    steps = max(1, len(data.sampler) // config.data.batch_size)
    module = PretrainModule(model, config.optim, steps)
    trainer = make_trainer(config, run_dir, monitor="val_loss" if data.val_set is not None else None, mode="min",
                       resume_from=checkpoint, steps_per_epoch=steps)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=checkpoint, weights_only=True)
    summary = {key: float(value) for key, value in trainer.callback_metrics.items()}
    summary["seconds"] = time.perf_counter() - start
    if trainer.is_global_zero:
        stores = [dataset.store for dataset in data.train_set.datasets]
        save_pretrained(model, run_dir / "model", preprocessing=stores[0].preprocessing(),
                        training=data_summary(stores))
        write_json_atomic(run_dir / "metrics.json", summary)
        plot_loss_curves(run_dir / "logs" / "metrics.csv", run_dir / "figures" / "loss_curves.png")
        write_run_report(run_dir, f"neurostorm pretrain --config {run_dir / 'config.yaml'} --out {run_dir}")
    return summary


def _task_head(config: ExperimentConfig, data: LabelledClips, encoder: NeuroSTORM):
    track_encoder = config.mode == "full"  # a standardising head follows an encoder whose weights train
    if data.target.values:
        targets = data.train_targets().astype(float)
        head = RegressionHead(encoder.out_dim, config.head_standardise, track_encoder)
        return head, 1, float(targets.mean()), float(targets.std() or 1.0), None
    n_classes = len(data.classes or [])
    if n_classes < 2:
        raise InputError(data.store.location, f"label {config.task.label!r} has fewer than 2 classes")
    weights = None
    if config.task.class_weights:
        counts = np.bincount(data.train_targets().astype(int), minlength=n_classes)
        weights = counts.sum() / (n_classes * np.maximum(counts, 1))
    head = ClassificationHead(encoder.out_dim, n_classes, config.head_standardise, track_encoder)
    return head, n_classes, 0.0, 1.0, weights


def train_and_test(config: ExperimentConfig, run_dir: Path, target: Target, checkpoint: Path | None = None
                   ) -> dict:
    """A label (``target``) learned on one split and scored on its test subjects: a linear model on fixed
    features (``mode=probe``, ``fc-linear``), or the encoder (or connectome model) adapted with a head
    (``mode`` full, prompt or lora), resumed from ``checkpoint`` when given. ``run_dir`` holds config.yaml."""
    if config.mode == "probe" or config.model.name == "fc-linear":
        return linear_probe(config, run_dir, target)
    data = LabelledClips(config, run_dir, target)
    encoder = initial_encoder(config, data)
    head, n_classes, mean, std, weights = _task_head(config, data, encoder)
    prepare_adaptation(config, encoder, head)
    if config.head_standardise and checkpoint is None:  # a resumed run reads the statistics from its checkpoint
        fit_head_scale(head, encoder, data)
    steps = max(1, len(data.datasets["train"]) // config.data.batch_size)
    refit = partial(fit_head_scale, head, encoder, data) if getattr(head.scale, "track_encoder", False) else None
    module = AdaptModule(encoder, head, target, n_classes, adaptation_optim(config), mean, std, weights,
                         steps, refit)
    trainer = make_trainer(config, run_dir, monitor="val_score", resume_from=checkpoint, steps_per_epoch=steps)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=checkpoint, weights_only=True)
    seconds = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path
    if best:  # test the best checkpoint by validation, not the last one
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    task = {"kind": config.task.kind, "target": target.record(), "label": config.task.label,
            "classes": data.classes, "n_classes": n_classes,
            "target_mean": mean, "target_std": std, "mode": config.mode, "train_seconds": seconds,
            "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "head_standardised": config.head_standardise,
            **({"harmonization": data.harmonization} if data.harmonization else {})}
    if trainer.is_global_zero:
        export_adapted(module, task, run_dir / "model", data.store)
    return report(run_dir, module, data, task)


def export_adapted(module: AdaptModule, task: dict, folder: Path, store: Store) -> None:
    merge_lora(module.encoder)  # LoRA updates folded into their layers: the same function, a plain encoder
    save_pretrained(module.encoder, folder, preprocessing=store.preprocessing(),
                    training={**data_summary([store]), "label": task["label"], "mode": task["mode"]})
    save_file({k: v.contiguous() for k, v in module.head.state_dict().items()}, str(folder / "head.safetensors"))
    write_json_atomic(folder / "task.json", task)


def load_adapted(folder: Path, optim=None) -> tuple[AdaptModule, dict]:
    """The encoder + head of a fine-tuned run's ``model`` folder, in evaluation mode."""
    task = json.loads((folder / "task.json").read_text())
    encoder, target = load_pretrained(folder), Target.of_task(task)
    standardised = task.get("head_standardised", False)
    head = RegressionHead(encoder.out_dim, standardised) if target.values else \
        ClassificationHead(encoder.out_dim, task["n_classes"], standardised)
    head.load_state_dict(load_file(str(folder / "head.safetensors")))
    module = AdaptModule(encoder, head, target, task["n_classes"], optim, task["target_mean"],
                         task["target_std"])
    return module.eval(), task


def predict_clips(module: AdaptModule, loader) -> pd.DataFrame:
    """Predictions per clip (logits, or values in the label's units) as :func:`predictions_frame`."""
    clips = over_clips(lambda x: module.to_original_units(module(x)), loader)
    return predictions_frame(clips["subject"], clips["run_id"], clips["start"], clips["output"], clips["y"])


def report(run_dir: Path, module: AdaptModule, data: LabelledClips, task: dict) -> dict:
    """Test predictions, metrics with CIs, figures; returns the metrics."""
    module.eval()
    frame = predict_clips(module, data.loader("test"))
    return write_scored_predictions(run_dir, frame, task, sites_of(data.store) if data.config.data.test_sites
                                    else None, run_dir / "logs" / "metrics.csv")


def evaluate(run_dir: str | Path) -> dict:
    """Recompute the test metrics of a fine-tuned run from its exported model and saved split."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise InputError(run_dir, "not a run folder (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    if not (run_dir / "model" / "task.json").exists():
        raise InputError(run_dir, f"a {config.task.kind} run with mode={config.mode} exports no "
                                  "network with a head to recompute from (evaluate reads runs of mode full, prompt "
                                  "or lora on a label or task state); its test metrics are in metrics.json")
    module, task = load_adapted(run_dir / "model", config.optim)
    data = LabelledClips(config, run_dir, module.target)
    frame = predict_clips(module, data.loader("test"))
    metrics = metrics_with_ci(module.target, task["n_classes"], frame)
    metrics["task"] = task
    return metrics


def _all_clips(config: ExperimentConfig, path: str) -> DataLoader:
    dataset = ClipDataset(path, sequence_length=config.data.sequence_length, stride=config.data.stride)
    return make_loader(dataset, config)


def embed(config: ExperimentConfig, out_dir: str | Path) -> Path:
    """Pooled embeddings of every clip of every store in ``config.data.stores`` with the configured encoder;
    writes OUT/embeddings.npz (clip-level: embedding, subject, run_id, start, store) and a per-subject mean."""
    out_dir = start_run(config, out_dir)
    encoder = initial_encoder(config).eval()
    def encode(x: torch.Tensor) -> torch.Tensor:
        return encoder.encode(fit_to_model(x, encoder.config.img_size))

    parts = [{**over_clips(encode, _all_clips(config, source.path)), "source": source.path}
             for source in config.data.stores]
    arrays = {"embedding": np.concatenate([p["output"] for p in parts]),
              **{k: np.concatenate([p[k] for p in parts]) for k in ("subject", "run_id", "start")},
              "store": np.concatenate([np.full(len(p["subject"]), p["source"]) for p in parts])}
    subjects, means, _ = per_subject(arrays["subject"], arrays["embedding"], arrays["subject"])
    if config.pooling != "mean":
        arrays.update(_run_embeddings(config, encoder))
    path = out_dir / "embeddings.npz"
    write_npz_atomic(path, {**arrays, "subject_ids": subjects, "subject_embedding": means.astype(np.float32)})
    return path


def _run_embeddings(config: ExperimentConfig, encoder: NeuroSTORM) -> dict[str, np.ndarray]:
    """One row per run of every store by ``config.pooling`` (cov's PCA fitted on all of them: no labels)."""
    if config.pooling == "clip_attention":
        raise InputError("config", "pooling=clip_attention is learned with a task head: use it with mode=probe")
    series = RunSeries()
    for source in config.data.stores:
        store = open_store(source.path, config)
        series.extend(run_series(encoder, store, store.manifest, config.data.sequence_length, config.data.stride,
                                 config.data.batch_size))
    if not series.run_ids:
        raise InputError("config", f"no run of the stores holds one clip of {config.data.sequence_length} frames")
    pooling = RunPooling(config.pooling).fit(series)
    return {"run_ids": np.array(series.run_ids), "run_subject": np.array(series.subjects),
            "run_embedding": pooling.transform(series), "skipped_runs": np.array(series.skipped, dtype=str)}


def predict(config: ExperimentConfig, out_dir: str | Path) -> pd.DataFrame:
    """Apply a fine-tuned model (``model.init`` = its model folder) to every clip of ``data.stores[0]``;
    writes OUT/predictions.csv (raw outputs per clip) and OUT/subject_predictions.csv (class and probabilities,
    or the value in the label's units, per subject; per clip for task state)."""
    folder = Path(config.model.init)
    if not (folder / "task.json").exists():
        raise InputError(folder, "model.init must be the model folder of a fine-tuned run (with task.json)")
    if not config.data.stores:
        raise InputError("config", "data.stores is empty: give the store to predict on")
    out_dir = start_run(config, out_dir)
    module, task = load_adapted(folder, config.optim)
    check_stores_fit([config.data.stores[0].path], module.encoder.config.img_size, str(folder))
    frame = predict_clips(module, _all_clips(config, config.data.stores[0].path))
    write_csv_atomic(out_dir / "predictions.csv", frame)
    outputs = frame[[c for c in frame.columns if c.startswith("out_")]].to_numpy()
    if module.target.per_clip:  # a condition per clip: no per-subject summary
        out, table = outputs, frame[["subject", "run_id", "start"]].copy()
    else:
        ids, out, _ = per_subject(frame["subject"].to_numpy(), outputs, frame["y"].to_numpy())
        table = pd.DataFrame({"subject": ids})
    name = task["label"] or "condition"
    if module.target.values:
        table[name] = out[:, 0]
    else:
        prob = probabilities(out)
        table[name] = [task["classes"][k] for k in prob.argmax(1)]
        for k, cls in enumerate(task["classes"]):
            table[f"p_{cls}"] = prob[:, k]
    write_csv_atomic(out_dir / "subject_predictions.csv", table)
    return table
