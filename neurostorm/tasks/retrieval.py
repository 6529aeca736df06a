"""What the retrieval families share: a contrastively trained (or frozen) encoder whose test embeddings are
ranked, one row per query in ``queries.csv``.

Trained (``full``/``prompt``/``lora``): an embedding head on the encoder, fitted with a contrastive loss of
temperature ``task.temperature`` (the family's positives); ``probe``: the frozen encoder. Each family says
which datasets it trains and tests on, what the head embeds into, and how test embeddings become queries
(:mod:`neurostorm.tasks.image_retrieval`, :mod:`neurostorm.tasks.reidentification`).

A trained run exports its encoder to RUN_DIR/model: re-identification training with τ = 0.1 is the
contrastive pretraining of SwiFT, and ``model.init=RUN_DIR/model`` fine-tunes from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from neurostorm.data.files import write_csv_atomic, write_json_atomic
from neurostorm.data.splits import load_or_make_split
from neurostorm.data.store import Store, data_summary
from neurostorm.models import EmbeddingHead
from neurostorm.models.encoder import NeuroSTORM
from neurostorm.models.lora import merge_lora
from neurostorm.models.weights import save_pretrained
from neurostorm.tasks.base import TaskFamily
from neurostorm.train.config import ExperimentConfig, OptimConfig
from neurostorm.train.data import fit_to_model, make_loader, open_store, over_clips, split_path, subjects_table
from neurostorm.train.modules import ClipModule, adaptation_optim, make_optimizer, prepare_adaptation
from neurostorm.train.trainer import initial_encoder, make_trainer


class ContrastiveModule(ClipModule):
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
    trainer = make_trainer(config, run_dir, monitor="val_loss", mode="min", steps_per_epoch=module.steps_per_epoch)
    trainer.fit(module, make_loader(train, config, shuffle=True, drop_last=len(train) > config.data.batch_size),
                make_loader(val, config), weights_only=True)
    best = trainer.checkpoint_callback.best_model_path
    if best:
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    module.eval()


class RetrievalTask(TaskFamily):
    """A family scored by ranking test embeddings: subclasses give the datasets, the head's output size and
    the queries, and the metrics of a query table."""

    predictions = "queries.csv"

    def datasets(self, config: ExperimentConfig, store: Store, split: dict[str, list[str]]
                 ) -> tuple[dict[str, Dataset], np.ndarray | None]:
        """Train, val and test datasets of the split, and the targets a trained head embeds into (image
        embeddings (N, D); None: the head's own 128-d space, trained between views of a subject)."""
        raise NotImplementedError

    def queries(self, config: ExperimentConfig, test: dict[str, np.ndarray], fit: Callable[[], dict],
                targets: np.ndarray | None, store: Store) -> pd.DataFrame:
        """The query table of the test embeddings ``test`` (:func:`over_clips` columns); ``fit()`` embeds the
        training set, for a frozen encoder's map into the target space."""
        raise NotImplementedError

    def score(self, queries: pd.DataFrame) -> dict:
        """Metrics with 95 % CIs of a query table."""
        raise NotImplementedError

    def figures(self, queries: pd.DataFrame, metrics: dict, folder: Path) -> None:
        """Figures of a scored query table (none by default)."""

    def run(self, config: ExperimentConfig, run_dir: Path, checkpoint: Path | None = None) -> dict:
        store = open_store(config.data.stores[0].path, config)
        split = load_or_make_split(split_path(config, run_dir), subjects_table(store), config.data.split_fractions,
                                   config.trainer.seed)
        encoder, data = initial_encoder(config), config.data
        start = time.perf_counter()
        sets, targets = self.datasets(config, store, split)
        if config.mode == "probe":
            def embed(x: torch.Tensor) -> torch.Tensor:
                return encoder.encode(fit_to_model(x, encoder.config.img_size))
            encoder.eval()
            trainable = 0
        else:
            head = EmbeddingHead(encoder.out_dim, targets.shape[1] if targets is not None else 128)
            prepare_adaptation(config, encoder, head)
            module = ContrastiveModule(encoder, head, adaptation_optim(config), config.task.temperature, targets,
                                       max(1, len(sets["train"]) // data.batch_size))
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
            _fit(config, run_dir, module, sets["train"], sets["val"])
            merge_lora(encoder)
            save_pretrained(encoder, run_dir / "model", preprocessing=store.preprocessing(),  # e.g. contrastive
                            training=data_summary([store]))
            embed = module
        test = over_clips(embed, make_loader(sets["test"], config))
        queries = self.queries(config, test, lambda: over_clips(embed, make_loader(sets["train"], config)),
                               targets, store)
        task = {"kind": self.kind, "mode": config.mode, "train_seconds": time.perf_counter() - start,
                "trainable_parameters": trainable}
        return self.score_folds(queries, task, run_dir, store)

    def score_folds(self, pooled: pd.DataFrame, task: dict, run_dir: Path, store: Store) -> dict:
        """RUN_DIR/queries.csv, metrics.json and the family's figures of a query table (one run's, or every
        fold's pooled, each query ranked within its own fold)."""
        write_csv_atomic(run_dir / "queries.csv", pooled)
        metrics = {**self.score(pooled), "task": task}
        self.figures(pooled, metrics, run_dir / "figures")
        write_json_atomic(run_dir / "metrics.json", json.loads(json.dumps(metrics, default=float)))
        return metrics
