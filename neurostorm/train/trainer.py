"""What every training run shares: the Lightning trainer with its loggers and callbacks, the run folder,
resumption, and the encoder a run starts from (scratch, a pretrained folder or a reference checkpoint)."""

from __future__ import annotations

import importlib.util
import logging
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from neurostorm.errors import InputError
from neurostorm.models import build_model
from neurostorm.models.encoder import NeuroSTORM
from neurostorm.models.hub import is_hub_id
from neurostorm.models.mamba import SCAN_NAMES, Mamba, scan_backend
from neurostorm.models.weights import (
    CHECKPOINT_SUFFIXES,
    load_encoder,
    load_official_checkpoint,
    pretrained_folder,
)
from neurostorm.train.config import ExperimentConfig, save_config
from neurostorm.train.csv_log import FlushLogs, RunCSVLogger, completed_epoch
from neurostorm.train.data import LabelledClips, check_stores_fit


class RandomState(Callback):
    """Keeps the Python, NumPy and PyTorch random states in every checkpoint and restores them on resume, so
    a resumed run draws the same crops, augmentations and masks as one that was never interrupted.

    The training loader draws from its own generator (the data module's ``generator``), restored as soon as
    the checkpoint is read, since Lightning may open the loader before training starts; the global states
    are put back at the start of training, after Lightning's sanity-check validation, whose loader draws
    from the global generator and would otherwise shift every later draw."""

    def __init__(self) -> None:
        self.pending: dict | None = None

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        version, keys, position = random.getstate()
        _, numpy_keys, numpy_pos, has_gauss, gauss = np.random.get_state()
        checkpoint["random_state"] = {"python": [version, list(keys), position], "torch": torch.get_rng_state(),
                                      "numpy": [numpy_keys.tolist(), int(numpy_pos), int(has_gauss), float(gauss)]}
        loader = getattr(trainer.datamodule, "generator", None)
        if loader is not None:
            checkpoint["random_state"]["loader"] = loader.get_state()

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        self.pending = checkpoint.get("random_state")
        loader = getattr(trainer.datamodule, "generator", None)
        if self.pending is not None and loader is not None and "loader" in self.pending:
            loader.set_state(self.pending["loader"])

    def on_train_start(self, trainer, module) -> None:
        if self.pending is None:
            return
        version, keys, position = self.pending["python"]
        random.setstate((version, tuple(keys), position))
        torch.set_rng_state(self.pending["torch"])
        keys, pos, has_gauss, gauss = self.pending["numpy"]
        np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        self.pending = None


class SampleRecord(Callback):
    """Writes the clips each process trained on (epoch, run_id, start) and, at the end, a checksum of its
    weights: with DDP the files show that ranks saw disjoint data and ended with the same weights."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, trainer) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f"rank{trainer.global_rank}.tsv"

    def on_train_start(self, trainer, module) -> None:
        self._path(trainer).write_text("epoch\trun_id\tstart\n")

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        with self._path(trainer).open("a") as f:
            for run_id, start in zip(batch["run_id"], batch["start"], strict=True):
                f.write(f"{trainer.current_epoch}\t{run_id}\t{int(start)}\n")

    def on_train_end(self, trainer, module) -> None:
        total = sum(float(p.detach().double().sum()) for p in module.parameters())
        (self.folder / f"rank{trainer.global_rank}.weights").write_text(f"{total:.17g}\n")


class DataWait(Callback):
    """How long training waits on its loader: the time from one step's end to the next one's start (Lightning
    fetches the batch and copies it to the device in between) as a share of the epoch's training time. On a
    GPU a share above ``stall_share`` is warned about once per epoch: the loader, not the model, sets the
    pace (on a CPU the reads share the model's cores, and the share says less). Timings stay out of the
    run's logs, which a resumed run reproduces exactly."""

    MIN_STEPS = 10  # fewer steps (the first one waits for the workers to start) say nothing

    def __init__(self, stall_share: float) -> None:
        self.stall_share = stall_share
        self.waited = self.stepped = 0.0
        self.steps, self.last = 0, 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self.waited = self.stepped = 0.0
        self.steps, self.last = 0, time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.waited += now - self.last
        self.last = now

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.stepped += now - self.last
        self.steps, self.last = self.steps + 1, now

    def on_train_epoch_end(self, trainer, module) -> None:
        if not self.steps:
            return
        share = self.waited / max(1e-9, self.waited + self.stepped)
        if module.device.type == "cuda" and self.steps >= self.MIN_STEPS and share > self.stall_share:
            rank_zero_warn(f"epoch {trainer.current_epoch}: training waited on data {share:.0%} of the time "
                           f"(over data.stall_share {self.stall_share:.0%}): raise data.num_workers (benchmarks/"
                           "README.md says how many a rate needs) or data.prefetch_batches")


class ScanReport(Callback):
    """Says which selective scan the model runs on which device, once training starts: on the console (with
    progress on) and in the run's hyper-parameter log (``logs/hparams.yaml``, TensorBoard); refuses a
    configured backend that cannot run on that device before any step."""

    def on_fit_start(self, trainer, module) -> None:
        layers = [m for m in module.modules() if isinstance(m, Mamba)]
        if layers:
            try:
                scan = scan_backend(layers[0].backend, module.device)
            except ValueError as err:  # a backend chosen in the configuration that cannot run here
                raise InputError("model.overrides.backend", str(err)) from None
            rank_zero_info(f"selective scan: backend {scan} ({SCAN_NAMES[scan]}) on {module.device}")
            for logger in trainer.loggers:
                logger.log_hyperparams({"selective_scan": scan, "device": str(module.device)})


def make_trainer(config: ExperimentConfig, run_dir: Path, monitor: str | None, mode: str = "max",
             resume_from: Path | None = None, steps_per_epoch: int | None = None) -> L.Trainer:
    """A Lightning trainer with the run's logs, checkpoints and random-state callback; the logging interval
    is at most one epoch's steps (so short runs log every epoch's steps without Lightning's warning)."""
    t, o = config.trainer, config.optim
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO if t.progress else logging.WARNING)
    resumed_after = completed_epoch(resume_from) if resume_from is not None else None
    log_interval = max(1, min(t.log_every_n_steps, steps_per_epoch or t.log_every_n_steps))
    loggers = [RunCSVLogger(run_dir, resumed_after), TensorBoardLogger(run_dir, name="logs", version="")]
    if t.wandb_project:
        if importlib.util.find_spec("wandb") is None:
            raise InputError("config", "trainer.wandb_project is set but the wandb package is not installed")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=t.wandb_project, save_dir=str(run_dir / "logs"), name=run_dir.name))
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode=mode,
                                 save_last=True, save_top_k=1 if monitor else 0, enable_version_counter=False)
    callbacks = [checkpoint, RandomState(), ScanReport(), DataWait(config.data.stall_share), FlushLogs()]
    callbacks += [SampleRecord(run_dir / "samples")] if t.record_samples else []
    return L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                     precision=t.precision, max_epochs=o.epochs, accumulate_grad_batches=o.accumulate_grad_batches,
                     gradient_clip_val=o.gradient_clip_val, enable_progress_bar=t.progress, logger=loggers,
                     callbacks=callbacks, log_every_n_steps=log_interval,
                     default_root_dir=run_dir, limit_train_batches=t.limit_train_batches,
                     num_sanity_val_steps=t.sanity_val_steps, enable_model_summary=False)


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a path, refused where it is an existing file."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(run_dir, "is a file: give --out a new folder or a run folder")
    return run_dir


@contextmanager
def nothing_left_if_refused(run_dir: str | Path) -> Iterator[Path]:
    """A run folder that this call creates is removed again when the run is refused for bad input, so a
    refused ``model.init`` or split leaves no ``config.yaml`` or ``split.json`` behind; an existing folder
    is left as it was found by the checks made before anything is written there."""
    run_dir = check_run_dir(run_dir)
    fresh = not run_dir.exists()
    try:
        yield run_dir
    except InputError:
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def start_run(config: ExperimentConfig, run_dir: str | Path) -> Path:
    run_dir = check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    return run_dir


def resume_path(run_dir: Path, resume: bool) -> Path | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise InputError(last, "nothing to resume: no last checkpoint in the run folder")
    return last if resume else None


def _names_hub_folder(init: str) -> bool:
    return Path(init).suffix not in CHECKPOINT_SUFFIXES and not Path(init).exists() and is_hub_id(init)


def check_model_init(init: str) -> None:
    """Refuse a ``model.init`` that is not 'scratch', an existing folder or an existing reference checkpoint,
    before a run writes anything."""
    path = Path(init)
    if init == "scratch" or path.is_dir() or _names_hub_folder(init):
        return
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise InputError(path, "model.init must be 'scratch', a pretrained folder, a Hub id (org/name) or a "
                               ".ckpt file")
    if not path.is_file():
        raise InputError(path, "model.init: no such checkpoint file")


def initial_encoder(config: ExperimentConfig, data: LabelledClips | None = None) -> NeuroSTORM:
    """The encoder to adapt: from scratch, from a pretrained folder, or from a reference .ckpt. A model that
    reads connectivity is sized to the atlas of ``data``; one that reads clips must fit every store's grid."""
    m = config.model
    path = Path(m.init)
    n_rois = data.datasets["train"].matrices.shape[1] if data is not None and data.input == "fc" else None
    sized = {} if n_rois is None else {"n_rois": n_rois}
    if m.init == "scratch":
        encoder = build_named(m.name, **{**sized, **m.overrides})
    elif path.is_dir() or _names_hub_folder(m.init):
        path = pretrained_folder(m.init)
        encoder = load_encoder(path, **m.overrides)
        if n_rois is not None and getattr(encoder.config, "n_rois", n_rois) != n_rois:
            raise InputError(path, f"weights for {encoder.config.n_rois} ROIs, but atlas {config.data.atlas} gives "
                                   f"{n_rois}: use the atlas the weights were trained on")
    else:
        check_model_init(m.init)
        encoder = build_named(m.name, **{**sized, **m.overrides})
        print(f"{path}: {load_official_checkpoint(path, encoder)}")
    if isinstance(encoder, NeuroSTORM):
        check_stores_fit([s.path for s in config.data.stores], encoder.config.img_size, m.name)
    return encoder


def build_named(name: str, **overrides):
    """A registry model from the configuration; an unknown name or setting is the user's input error."""
    try:
        return build_model(name, **overrides)
    except ValueError as err:
        raise InputError("model", str(err)) from None
