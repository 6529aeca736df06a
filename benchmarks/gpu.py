"""``python -m benchmarks --gpu --json OUT``: the prepared GPU check, one table and one JSON record per row.

On one CUDA device, in a few minutes:

- parity: the Triton scan against the plain float64 loop on the GPU (y and all six gradients, relative to
  the largest reference value), and the whole base encoder on Triton (GPU) against the numba kernel (CPU)
  on the same weights and input;
- the scan forward+backward at the base encoder's stage-1 shape of batch 8 (2,560 windows × 256 tokens ×
  E 72 × N 16) and stage-3 shape (40 × 256 × 288): Triton, a sequential PyTorch loop (timed on a subset of
  windows, scaled), ``mambapy`` and ``mamba_ssm`` where importable (each row says when one is not);
- the base encoder's bf16 forward (inference) clips/s at batch 8, 16, 32;
- a STORM (``neurostorm-mae-base``) training step at batch 8 under bf16 autocast (AdamW): seconds,
  clips/s, peak GPU memory; again with ``checkpoint_blocks=True``;
- ``neurostorm pretrain --config base`` for about 26 steps on a generated 2 mm store, on the GPU: the first
  and last logged losses, and the device and scan the run's log names;
- STORM training steps at batch 8 fed by the real pretraining loader from that store (its workers, the
  stored int8 bytes in pinned memory, decoded on the device) beside the same steps fed one batch over and
  over (the model alone): clips/s of each, ``ratio`` = loader / model alone, and the share of time training
  waited on data.

Without a CUDA device only the parity rows run, on CPU tensors in Triton's interpreter at a small shape,
and the table says "GPU figures: not measured".
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import median_seconds
from benchmarks.scan import LENGTH, STATES, mambapy_scan
from benchmarks.scan import scan_inputs as cpu_scan_inputs

STAGES = {"stage1": (2560, 72), "stage3": (40, 288)}  # windows at batch 8, channels E (the scan suite's × 8)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(step, device: str, repeats: int) -> float:
    def synced():
        step()
        _sync(device)

    return median_seconds(synced, repeats)


def _row(name: str, shape: list[int], seconds: float = float("nan"), **extra) -> dict:
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return {"name": name, "shape": shape, "seconds": seconds, "gpu_peak_mib": peak, **extra}


def scan_inputs(windows: int, channels: int, device: str) -> list[torch.Tensor]:
    """The scan suite's inputs on ``device``, u and delta as the (W, E, L) views of (W, L, E) tensors that the
    Mamba layer passes; every one a leaf that takes a gradient."""
    u, delta, *rest = (t.to(device) for t in cpu_scan_inputs(windows, channels, requires_grad=False))
    return [t.requires_grad_() for t in (u.transpose(1, 2), delta.transpose(1, 2), *rest)]


def parity(device: str, windows: int, channels: int = 72) -> list[dict]:
    """Triton scan vs the float64 loop; base encoder Triton (device) vs numba (CPU), same weights."""
    from neurostorm import build_model
    from neurostorm.models.scan import selective_scan_reference
    from neurostorm.models.scan_triton import selective_scan_triton

    inputs = scan_inputs(windows, channels, device)
    exact = [t.detach().double().requires_grad_() for t in inputs]
    y, y_ref = selective_scan_triton(*inputs), selective_scan_reference(*exact)
    upstream = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, inputs, upstream.float())
    grads_ref = torch.autograd.grad(y_ref, exact, upstream)
    errors = {name: float((value.detach().double() - reference.detach()).abs().max() / reference.detach().abs().max())
              for name, value, reference in zip(["y", "du", "ddelta", "dA", "dB", "dC", "dD"], (y, *grads),
                                                (y_ref, *grads_ref), strict=True)}
    rows = [_row("parity-scan-triton-vs-float64-loop", [windows, LENGTH, channels, STATES], worst=max(errors.values()),
                 **errors)]
    if device == "cuda":
        torch.manual_seed(0)
        encoder = build_model("neurostorm-base").eval()
        x = torch.randn(1, 1, 96, 96, 96, 20)
        with torch.no_grad():
            on_cpu = encoder.encode(x)
            on_gpu = encoder.cuda().encode(x.cuda()).cpu()
        rows.append(_row("parity-base-encoder-triton-vs-numba", [1, 1, 96, 96, 96, 20],
                         worst=float((on_gpu - on_cpu).abs().max() / on_cpu.abs().max())))
    return rows


def scan_speed(stage: str, repeats: int) -> list[dict]:
    """Forward+backward of each available scan at a stage's batch-8 shape; ratio = seconds / Triton's."""
    from neurostorm.models.mamba import mamba_ssm_available
    from neurostorm.models.scan import selective_scan_reference
    from neurostorm.models.scan_triton import selective_scan_triton

    windows, channels = STAGES[stage]
    scans = {"triton": (selective_scan_triton, windows), "loop": (selective_scan_reference, min(windows, 40))}
    if importlib.util.find_spec("mambapy"):
        scans["mambapy"] = (lambda u, delta, *rest: mambapy_scan(u.transpose(1, 2), delta.transpose(1, 2), *rest),
                            windows)
    if mamba_ssm_available():
        from neurostorm.models.mamba import _cuda_selective_scan

        scans["mamba_ssm"] = (_cuda_selective_scan, windows)
    rows = []
    for kind, (scan, measured) in scans.items():
        inputs = scan_inputs(measured, channels, "cuda")
        torch.cuda.reset_peak_memory_stats()

        def step(scan=scan, inputs=inputs):
            for t in inputs:
                t.grad = None
            scan(*inputs).sum().backward()

        try:
            seconds = _timed(step, "cuda", 1 if kind == "loop" else repeats) * windows / measured
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:  # mambapy at stage 1 may not fit
            rows.append(_row(f"scan-{stage}-{kind}-fwd+bwd", [windows, LENGTH, channels, STATES], error=str(err)[:200]))
            continue
        rows.append(_row(f"scan-{stage}-{kind}-fwd+bwd", [windows, LENGTH, channels, STATES], seconds,
                         windows_measured=measured))
    reference = rows[0]["seconds"]
    for row in rows:
        row.update(ratio=row["seconds"] / reference, ratio_means="times slower than triton")
    notes = [kind for kind in ("mambapy", "mamba_ssm") if kind not in scans]
    if notes:
        rows.append(_row(f"scan-{stage}-not-importable", [], note=", ".join(notes) + " not importable here"))
    return rows


def encoder_throughput(batch: int, repeats: int) -> dict:
    from neurostorm import build_model

    encoder = build_model("neurostorm-base").cuda().eval()
    x = torch.randn(batch, 1, 96, 96, 96, 20, device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def forward():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            encoder.encode(x)

    seconds = _timed(forward, "cuda", repeats)
    return _row(f"encoder-base-bf16-forward-b{batch}", [batch, 1, 96, 96, 96, 20], seconds,
                clips_per_s=batch / seconds)


def storm_step(batch: int, checkpoint: bool, repeats: int) -> dict:
    from neurostorm import build_model

    model = build_model("neurostorm-mae-base", checkpoint_blocks=checkpoint).cuda().train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    x = torch.randn(batch, 1, 96, 96, 96, 20, device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step():
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).loss
        loss.backward()
        optimiser.step()

    seconds = _timed(step, "cuda", repeats)
    return _row(f"storm-base-bf16-train-step-b{batch}{'-checkpointed' if checkpoint else ''}",
                [batch, 1, 96, 96, 96, 20], seconds, clips_per_s=batch / seconds)


def pretrain_run(workdir: Path) -> dict:
    """``neurostorm pretrain --config base`` for ~26 steps (2 epochs of ~50 clips at batch 4) on the GPU over
    a generated 2 mm store."""
    import pandas as pd
    import yaml

    cli = [sys.executable, "-m", "neurostorm.cli"]
    start = time.perf_counter()
    subprocess.run([*cli, "simulate", "--out", str(workdir / "bids"), "--subjects", "8", "--frames", "60",
                    "--quiet"], check=True)  # 148 frames at TR 0.8 per subject: about 50 training clips
    subprocess.run([*cli, "preprocess", str(workdir / "bids"), "--out", str(workdir / "store"), "--workers",
                    str(min(8, os.cpu_count() or 1)), "--quiet"], check=True)
    prepared = time.perf_counter() - start
    run = workdir / "pretrain"
    subprocess.run([*cli, "pretrain", "--config", "base", f"data.stores=[{workdir / 'store'}]",
                    "data.batch_size=4", "optim.epochs=2", "optim.lr=1e-3", "trainer.accelerator=gpu",
                    "trainer.devices=1", "trainer.precision=bf16-mixed", "trainer.log_every_n_steps=1",
                    "--quiet", "--out", str(run)], check=True)
    log = pd.read_csv(run / "logs" / "metrics.csv")
    losses = log["train_loss_step"].dropna().to_numpy()
    logged = yaml.safe_load((run / "logs" / "hparams.yaml").read_text())
    return _row("pretrain-base-cli-gpu", [len(losses), 2], time.perf_counter() - start - prepared,
                first_loss=float(losses[:5].mean()), last_loss=float(losses[-5:].mean()),
                loss_fell=bool(losses[-5:].mean() < losses[:5].mean()), device=logged.get("device"),
                selective_scan=logged.get("selective_scan"), data_seconds=prepared)


def loader_vs_model(store: Path, workdir: Path, steps: int, preset: str = "base", accelerator: str = "gpu",
                    workers: int | None = None) -> dict:
    """Training steps of ``neurostorm-mae-<preset>`` under Lightning fed by the pretraining loader of
    ``store``, and fed its first batch ``steps`` times (the model alone, the same copy to the device and
    decoding); clips/s of both over the steps after the first three."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from neurostorm import build_model
    from neurostorm.train.config import load_config
    from neurostorm.train.data import PretrainClips
    from neurostorm.train.modules import PretrainModule

    workers = workers if workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))
    on_gpu = accelerator == "gpu"
    config = load_config(preset, [f"data.stores=[{store}]", "data.batch_size=8", f"data.num_workers={workers}",
                                  "data.val_subjects_for_pretraining=0", f"trainer.accelerator={accelerator}"])
    data = PretrainClips(config, workdir)
    real = data.train_dataloader()
    batch = next(iter(real))

    class Clock(Callback):
        skip = 3  # the first steps compile kernels and start the workers
        seen = clips = 0  # over every epoch: a small store's epoch is a few steps, the last one short

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if self.seen == self.skip:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            _sync("cuda" if on_gpu else "cpu")
            self.seen += 1
            if self.seen > self.skip:
                self.seconds, self.clips = time.perf_counter() - self.start, self.clips + len(batch["x"])
            self.steps = self.seen - self.skip

    rates = {}
    repeated = torch.utils.data.DataLoader([batch] * steps, batch_size=None)  # the batch as it is, each step
    for name, loader in (("model", repeated), ("loader", real)):
        torch.manual_seed(0)
        clock = Clock()
        trainer = L.Trainer(accelerator=accelerator, devices=1, precision="bf16-mixed" if on_gpu else "32-true",
                            max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                            callbacks=[clock])
        trainer.fit(PretrainModule(build_model(f"neurostorm-mae-{preset}"), config.optim), train_dataloaders=loader)
        rates[name] = clock.clips / clock.seconds if clock.clips else float("nan")
    return _row(f"pretrain-{preset}-loader-vs-model", [clock.steps, 8, *batch["x"].shape[2:]], clock.seconds,
                clips_per_s=rates["loader"], model_clips_per_s=rates["model"], workers=workers,
                pinned=bool(batch["x"].is_pinned()), ratio=rates["loader"] / rates["model"],
                ratio_means="clips/s with the real loader / with one batch over and over")


def run(quick: bool) -> list[dict]:
    repeats = 2 if quick else 5
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are first imported
        # Triton's interpreter: a few channels show the check runs (tests/test_scan_triton.py covers the sizes)
        return [*parity("cpu", windows=2, channels=8), _row("gpu", [], note="GPU figures: not measured (no CUDA "
                                                                            "device)")]
    rows = parity("cuda", windows=256)
    for stage in STAGES:
        rows += scan_speed(stage, repeats)
    rows += [encoder_throughput(batch, repeats) for batch in (8, 16, 32)]
    rows += [storm_step(8, checkpoint, repeats) for checkpoint in (False, True)]
    with tempfile.TemporaryDirectory() as scratch:
        rows.append(pretrain_run(Path(scratch)))
        rows.append(loader_vs_model(Path(scratch) / "store", Path(scratch) / "loader", steps=20 if quick else 40))
    device = torch.cuda.get_device_name()
    return [{**row, "device": row.get("device") or device} for row in rows]
