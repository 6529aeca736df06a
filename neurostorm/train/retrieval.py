"""Retrieval tasks: fMRI-to-image retrieval and subject re-identification.

``image_retrieval``: clips are labelled by the stimulus they lie in (BIDS events, ``trial_type`` = stimulus
name); ``task.stimuli`` is an ``.npz`` with ``names`` (N,) and ``embeddings`` (N, D) from any image model.
Trained (``full``/``prompt``): an embedding head maps the encoder into the image space with a symmetric
InfoNCE loss; ``probe``: ridge regression from frozen clip embeddings to image embeddings. Scored on the
test subjects' clips: is the clip's stimulus among the k most similar of the test stimuli (top-1, top-5)?

``reidentification``: one embedding per run (the mean over its clips); each test subject's first run is a
query against every other run of the test subjects (Rank-1, mAP). ``probe`` uses the frozen encoder;
``full``/``prompt`` first train an embedding head with NT-Xent between two clips of the same subject.

A trained run exports its encoder to RUN_DIR/model: re-identification training with τ = 0.1 is the
contrastive pretraining of SwiFT, and ``model.init=RUN_DIR/model`` fine-tunes from it.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.linear_model import RidgeCV
from torch.utils.data import DataLoader, Dataset

from neurostorm.data.datasets import ClipDataset, EventClipDataset, clip_tensor
from neurostorm.data.files import write_csv_atomic, write_json_atomic
from neurostorm.data.splits import load_or_make_split
from neurostorm.data.store import Store, data_summary
from neurostorm.errors import InputError
from neurostorm.evaluation.figures import rank_histogram
from neurostorm.evaluation.retrieval import image_retrieval_queries, reidentification_queries, retrieval_metrics
from neurostorm.models import EmbeddingHead
from neurostorm.models.encoder import NeuroSTORM
from neurostorm.models.lora import merge_lora
from neurostorm.models.weights import save_pretrained
from neurostorm.train.config import ExperimentConfig, OptimConfig
from neurostorm.train.data import fit_to_model, over_clips, split_path, subjects_table
from neurostorm.train.modules import adaptation_optim, make_optimizer, prepare_adaptation
from neurostorm.train.trainer import initial_encoder, make_trainer

RETRIEVAL = ("image_retrieval", "reidentification")  # task kinds scored by retrieval


def read_stimuli(path: str | None) -> tuple[list[str], np.ndarray]:
    if path is None:
        raise InputError("config", "task.stimuli is not set: an .npz of stimulus names and image embeddings")
    try:
        with np.load(path, allow_pickle=False) as saved:
            names, vectors = [str(n) for n in saved["names"]], np.asarray(saved["embeddings"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"not an .npz with 'names' and 'embeddings' arrays ({err})") from err
    if vectors.ndim != 2 or len(names) != len(vectors):
        raise InputError(path, f"{len(names)} names for embeddings of shape {vectors.shape}")
    return names, vectors


class SubjectPairs(Dataset):
    """Two random clips of the same subject (from different runs when it has several), ``repeats`` per
    subject and epoch: positives for NT-Xent; the other subjects of the batch are the negatives."""

    def __init__(self, store: Store, subjects: list[str], length: int, repeats: int = 4) -> None:
        manifest = store.manifest[store.manifest["n_frames"] >= length]
        self.store, self.length, self.repeats = store, length, repeats
        self.runs = {s: rows for s, rows in manifest.groupby(manifest["subject"].astype(str)) if s in set(subjects)}
        self.subjects = sorted(self.runs)

    def __len__(self) -> int:
        return len(self.subjects) * self.repeats

    def _clip(self, record) -> torch.Tensor:
        start = int(torch.randint(0, int(record["n_frames"]) - self.length + 1, (1,)))
        return clip_tensor(self.store, record["run_id"], start, self.length)

    def __getitem__(self, item: int) -> dict:
        runs = self.runs[self.subjects[item % len(self.subjects)]]
        picks = torch.randperm(len(runs))[:2].tolist() if len(runs) > 1 else [0, 0]
        return {"x1": self._clip(runs.iloc[picks[0]]), "x2": self._clip(runs.iloc[picks[1]])}


class ContrastiveModule(L.LightningModule):
    """Encoder + embedding head trained contrastively: InfoNCE against image embeddings, or NT-Xent
    between two clips of a subject; temperature τ."""

    def __init__(self, encoder: NeuroSTORM, head: EmbeddingHead, optim: OptimConfig, temperature: float,
                 images: np.ndarray | None = None, steps_per_epoch: int = 1) -> None:
        super().__init__()
        self.encoder, self.head, self.optim, self.temperature = encoder, head, optim, temperature
        self.steps_per_epoch = steps_per_epoch
        self.register_buffer("images", None if images is None else F.normalize(torch.as_tensor(images), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.encode(fit_to_model(x, self.encoder.config.img_size)))

    def loss(self, batch: dict) -> torch.Tensor:
        if self.images is None:  # NT-Xent over 2B views: each view's positive is the other view of its subject
            z = torch.cat([self(batch["x1"]), self(batch["x2"])])  # (2B, D), unit norm
            logits = z @ z.T / self.temperature
            logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
            b = len(z) // 2
            positive = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
            return F.cross_entropy(logits, positive)
        z = self(batch["x"])  # (B, D)
        logits = z @ self.images.T / self.temperature  # (B, N): clip → every stimulus
        to_images = F.cross_entropy(logits, batch["y"])
        # stimulus → clips of the batch; a stimulus seen by several clips has several positives
        present = batch["y"].unique()
        columns = logits[:, present].T.log_softmax(dim=1)  # (U, B)
        positives = (batch["y"][None, :] == present[:, None]).float()
        to_clips = -(columns * positives).sum(1) / positives.sum(1)
        return 0.5 * (to_images + to_clips.mean())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, batch_size=len(next(iter(batch.values()))))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch), prog_bar=True, batch_size=len(next(iter(batch.values()))),
                 sync_dist=True)

    def configure_optimizers(self):
        return make_optimizer(self, self.optim, self.steps_per_epoch)


def _fit(config: ExperimentConfig, run_dir: Path, module: ContrastiveModule, train: Dataset, val: Dataset) -> None:
    b, workers = config.data.batch_size, config.data.num_workers
    trainer = make_trainer(config, run_dir, monitor="val_loss", mode="min", steps_per_epoch=module.steps_per_epoch)
    trainer.fit(module, DataLoader(train, batch_size=b, shuffle=True, num_workers=workers, drop_last=len(train) > b),
                DataLoader(val, batch_size=b, num_workers=workers), weights_only=True)
    best = trainer.checkpoint_callback.best_model_path
    if best:
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    module.eval()


def _conditions_without_embedding(conditions: list[str], stimuli: str, names: list[str]) -> list[str]:
    """The store's conditions that ``stimuli`` has no embedding for (blocks of a task run beside the image
    runs, say), with a warning that their clips are left out; refused when no condition has one."""
    unmatched = sorted(set(conditions) - set(names))
    if len(unmatched) == len(conditions):
        raise InputError(stimuli, f"no embedding for any condition of the store's events "
                                  f"({', '.join(unmatched[:5])}); names: {', '.join(names[:5])}")
    if unmatched:
        warnings.warn(f"{stimuli}: no embedding for condition(s) {', '.join(unmatched[:8])}: their clips are "
                      "left out", stacklevel=2)
    return unmatched


def retrieval(config: ExperimentConfig, run_dir: Path) -> dict:
    """Train (unless ``mode=probe``) and score a retrieval task; writes metrics.json and figures."""
    store = Store(config.data.stores[0].path)
    split = load_or_make_split(split_path(config, run_dir), subjects_table(store), config.data.split_fractions,
                               config.trainer.seed)
    encoder, task, data = initial_encoder(config), config.task, config.data
    start = time.perf_counter()
    if task.kind == "image_retrieval":
        names, vectors = read_stimuli(task.stimuli)

        def event_sets(exclude: list[str]) -> dict[str, EventClipDataset]:
            return {s: EventClipDataset(store, split[s], data.sequence_length, data.stride, task.events,
                                        task.events_delay, exclude) for s in ("train", "val", "test")}

        sets = event_sets(task.exclude_conditions)  # classes: the conditions of every run of the store
        unmatched = _conditions_without_embedding(sets["train"].classes, task.stimuli, names)
        if unmatched:
            sets = event_sets([*task.exclude_conditions, *unmatched])
        row = np.array([names.index(c) for c in sets["train"].classes])  # dataset class → embedding row
        images = vectors[row]  # (classes, D) in the datasets' class order
    else:
        sets = {s: SubjectPairs(store, split[s], data.sequence_length) for s in ("train", "val")}
        sets["test"] = ClipDataset(store, split["test"], data.sequence_length, stride=data.stride)
        images = None
    if config.mode == "probe":
        def embed(x):
            return encoder.encode(fit_to_model(x, encoder.config.img_size))
        encoder.eval()
        trainable = 0
    else:
        head = EmbeddingHead(encoder.out_dim, images.shape[1] if images is not None else 128)
        prepare_adaptation(config, encoder, head)
        module = ContrastiveModule(encoder, head, adaptation_optim(config), task.temperature, images,
                                   max(1, len(sets["train"]) // data.batch_size))
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        _fit(config, run_dir, module, sets["train"], sets["val"])
        merge_lora(encoder)
        save_pretrained(encoder, run_dir / "model", preprocessing=store.preprocessing(),  # e.g. contrastive
                        training=data_summary([store]))
        embed = module
    loader = DataLoader(sets["test"], batch_size=data.batch_size, num_workers=data.num_workers)
    test = over_clips(embed, loader)
    if task.kind == "image_retrieval":
        brain = test["output"]
        if config.mode == "probe":  # ridge map from frozen embeddings to the image space, fit on train clips
            fit = over_clips(embed, DataLoader(sets["train"], batch_size=data.batch_size))
            ridge = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(fit["output"], images[fit["y"]])
            brain = ridge.predict(brain)
        shown = np.unique(test["y"])  # candidates: the stimuli of the test clips
        queries = image_retrieval_queries(brain, np.searchsorted(shown, test["y"]), images[shown])
        queries.insert(0, "subject", test["subject"])
        queries.insert(1, "run_id", test["run_id"])
        queries.insert(2, "start", test["start"])
    else:
        runs = sorted(set(test["run_id"]))
        per_run = np.stack([test["output"][test["run_id"] == r].mean(0) for r in runs])
        owner = np.array([test["subject"][list(test["run_id"]).index(r)] for r in runs])
        first = np.array([list(owner).index(s) == i for i, s in enumerate(owner)])
        if first.all():
            raise InputError(store.location, "re-identification needs two or more runs of the test subjects")
        queries = reidentification_queries(per_run[first], owner[first], per_run[~first], owner[~first])
        queries.insert(1, "run_id", np.array(runs)[first][np.isin(owner[first], owner[~first])])
    task_info = {"kind": task.kind, "mode": config.mode, "train_seconds": time.perf_counter() - start,
                 "trainable_parameters": trainable}
    return score_queries(queries, task_info, run_dir)


def score_queries(queries: pd.DataFrame, task: dict, run_dir: Path) -> dict:
    """Metrics of a retrieval query table (one run's, or every fold's pooled): RUN_DIR/queries.csv,
    metrics.json and, for image retrieval, the rank histogram; returns the metrics."""
    write_csv_atomic(run_dir / "queries.csv", queries)
    metrics = retrieval_metrics(task["kind"], queries)
    metrics["task"] = task
    if task["kind"] == "image_retrieval":
        rank_histogram(queries["rank"].to_numpy(), metrics["n_images"], run_dir / "figures" / "rank_histogram.png")
    write_json_atomic(run_dir / "metrics.json", json.loads(json.dumps(metrics, default=float)))
    return metrics
