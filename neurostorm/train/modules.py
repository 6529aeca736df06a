"""LightningModules: STORM pretraining and supervised adaptation (full fine-tuning or prompt tuning)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurostorm.data.augment import augment
from neurostorm.data.datasets import decoded
from neurostorm.evaluation.scores import subject_metrics
from neurostorm.evaluation.target import Target
from neurostorm.models.lora import lora_tuning
from neurostorm.models.prompts import prompt_tuning
from neurostorm.models.storm import STORM
from neurostorm.train.config import ExperimentConfig, OptimConfig
from neurostorm.train.data import fit_to_model


def make_optimizer(module: L.LightningModule, optim: OptimConfig, steps_per_epoch: int):
    """AdamW over trainable parameters (no weight decay on norms, biases, A_log, D, tables), those of
    ``module.encoder`` at ``optim.pretrained_lr`` when set (:func:`adaptation_optim` says where), the rest at
    ``optim.lr``; optional linear warm-up and cosine decay, stepped per optimiser step."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or getattr(p, "_no_weight_decay", False) or name.endswith(("pos_embed", "time_embed"))
        groups.setdefault((name.startswith("encoder."), skip), []).append(p)
    optimizer = torch.optim.AdamW([{"params": params, "weight_decay": 0.0 if skip else optim.weight_decay,
                                    "lr": optim.pretrained_lr if in_encoder and optim.pretrained_lr else optim.lr}
                                   for (in_encoder, skip), params in groups.items()], lr=optim.lr)
    if not (optim.cosine or optim.warmup_epochs):
        return optimizer
    total = max(1, optim.epochs * steps_per_epoch)
    warmup = optim.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not optim.cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ClipModule(L.LightningModule):
    """A LightningModule fed by clip loaders: their stored clips (int8 or float16 with per-frame scales) are
    decoded to float32 input after Lightning has moved the batch to the module's device, so the bytes that
    cross are the stored ones."""

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return decoded(batch) if isinstance(batch, dict) else batch


class PretrainModule(ClipModule):
    """STORM masked reconstruction with augmentation; validation also reports the loss of predicting each
    clip's mean, the floor a useful model must beat."""

    def __init__(self, model: STORM, optim: OptimConfig, steps_per_epoch: int = 1, augment_clips: bool = True):
        super().__init__()
        self.model, self.optim, self.steps_per_epoch, self.augment_clips = model, optim, steps_per_epoch, augment_clips

    def _input(self, batch: dict) -> torch.Tensor:
        return self.model.encoder.standardise(fit_to_model(batch["x"], self.model.config.encoder.img_size))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = self._input(batch)
        if self.augment_clips:
            x = augment(x)
        loss = self.model(x).loss
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = self._input(batch)
        generator = torch.Generator(device=x.device).manual_seed(batch_idx)  # the same masks every epoch
        out = self.model(x, generator=generator)
        mean_prediction = x.mean(dim=(1, 2, 3, 4, 5), keepdim=True).expand_as(x)
        patches = self.model.encoder.patch_embed.patchify(mean_prediction)
        self.log("val_loss", out.loss, prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        self.log("val_loss_mean_predictor", self.model.loss(x, patches, out.mask), batch_size=x.shape[0],
                 sync_dist=True)

    def configure_optimizers(self):
        return make_optimizer(self, self.optim, self.steps_per_epoch)


def label_loss(out: torch.Tensor, y: torch.Tensor, values: bool, class_weights: torch.Tensor | None = None
               ) -> torch.Tensor:
    """The loss of a head's outputs (B, 1 or K): MSE for values (``y`` already standardised), BCE for one logit
    (two classes), cross-entropy for K; ``class_weights`` (K,) weigh each row by its class."""
    if values:
        return F.mse_loss(out[:, 0], y.float())
    if out.shape[1] == 1:
        weight = None if class_weights is None else class_weights[y.long()]
        return F.binary_cross_entropy_with_logits(out[:, 0], y.float(), weight=weight)
    return F.cross_entropy(out, y.long(), weight=class_weights)


TIE_BREAK = 1e-3  # weight of AUROC in a classifier's checkpoint score


def checkpoint_score(target: Target, metrics: dict[str, float]) -> float:
    """One number to pick the best checkpoint by, higher is better: −MSE for values; for classes balanced
    accuracy + 0.001 × AUROC, so that among checkpoints whose balanced accuracies tie (above all
    those that decide every subject as one class, 0.5 for two classes) the one ranking the subjects best is
    kept rather than the earliest."""
    if target.values:
        return -metrics["mse"]
    auroc = metrics.get("auroc", float("nan"))
    return metrics["balanced_accuracy"] + (0.0 if np.isnan(auroc) else TIE_BREAK * auroc)


def adaptation_optim(config: ExperimentConfig) -> OptimConfig:
    """The optimiser settings of an adaptation run: ``pretrained_lr`` holds where pretrained weights train
    (mode full, ``model.init`` not scratch), so that a pretrained encoder fine-tunes slower than its new head;
    prompts, LoRA factors and an encoder from scratch are new parameters, trained at ``lr``."""
    if config.mode == "full" and config.model.init != "scratch":
        return config.optim
    return dataclasses.replace(config.optim, pretrained_lr=None)


def prepare_adaptation(config: ExperimentConfig, encoder: nn.Module, head: nn.Module) -> None:
    """``mode=prompt`` or ``mode=lora``: add the trained parameters to the encoder and freeze the rest of it
    (printing the counts); ``full`` trains everything as it is."""
    if config.mode == "prompt":
        print(prompt_tuning(encoder, head, config.prompt_tokens))
    elif config.mode == "lora":
        print(lora_tuning(encoder, head, config.lora_rank, config.lora_alpha, config.lora_targets))


class AdaptModule(ClipModule):
    """Encoder (any model with ``encode`` and ``out_dim``) + head trained on a label (``target``): BCE for two
    classes, cross-entropy for K, MSE on standardised targets for values. Collects per-clip outputs of val/test for
    per-subject metrics. ``refit_head``: called before each validation (not the sanity check) to refit a
    standardising head's statistics to the encoder as it now is."""

    def __init__(self, encoder: nn.Module, head: nn.Module, target: Target, n_classes: int, optim: OptimConfig,
                 target_mean: float = 0.0, target_std: float = 1.0, class_weights: np.ndarray | None = None,
                 steps_per_epoch: int = 1, refit_head: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.refit_head = refit_head
        self.encoder, self.head, self.target, self.n_classes = encoder, head, target, n_classes
        self.optim, self.steps_per_epoch = optim, steps_per_epoch
        self.target_mean, self.target_std = target_mean, target_std
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.outputs: dict[str, list] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, 1, X, Y, Z, T) or connectivity (B, R, R) → logits (B, 1 or K), or standardised
        predictions (B, 1) for values."""
        if x.ndim == 6:
            x = fit_to_model(x, self.encoder.config.img_size)
        return self.head(self.encoder.encode(x))

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.target.values:
            y = (y - self.target_mean) / self.target_std
        return label_loss(out, y, self.target.values, self.class_weights)

    def to_original_units(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.target_std + self.target_mean if self.target.values else out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["x"]), batch["y"])
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, batch_size=batch["x"].shape[0])
        extra = self.regularisers(batch["y"])
        for name, value in extra.items():  # a model's own training losses (BNT, BrainGNN), beside the task's
            self.log(f"train_{name}", value, on_epoch=True, batch_size=batch["x"].shape[0])
        return loss + sum(extra.values())

    def regularisers(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder's weighted extra losses of the last forward (class labels for group terms), if any."""
        if not hasattr(self.encoder, "regularisers"):
            return {}
        return self.encoder.regularisers(None if self.target.values else y)

    def _collect(self, stage: str, batch: dict) -> None:
        out = self(batch["x"])
        self.log(f"{stage}_loss", self.loss(out, batch["y"]), prog_bar=stage == "val", batch_size=out.shape[0],
                 sync_dist=True)
        self.outputs.setdefault(stage, []).append(
            (list(batch["subject"]), self.to_original_units(out).detach().float().cpu().numpy(),
             batch["y"].cpu().numpy()))

    def on_validation_epoch_start(self) -> None:
        if self.refit_head is not None and not self.trainer.sanity_checking:
            self.refit_head()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._collect("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._collect("test", batch)

    def on_validation_epoch_end(self) -> None:
        gathered = self.outputs.pop("val", [])
        if self.trainer.sanity_checking:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process scores the whole validation set, so all agree on the best checkpoint
            parts: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, gathered)
            gathered = [item for part in parts for item in part]
        if not gathered:
            return
        subjects = np.concatenate([np.asarray(g[0]) for g in gathered])
        metrics = subject_metrics(self.target, self.n_classes, subjects, np.concatenate([g[1] for g in gathered]),
                                  np.concatenate([g[2] for g in gathered]))
        self.log("val_score", checkpoint_score(self.target, metrics), prog_bar=True)
        for name, value in metrics.items():
            self.log(f"val_{name}", value)

    def configure_optimizers(self):
        return make_optimizer(self, self.optim, self.steps_per_epoch)
