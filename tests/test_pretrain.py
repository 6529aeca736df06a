"""STORM pretraining from the command line: mixing stores, exported weights, resume after SIGKILL."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from neurostorm.cli import main
from neurostorm.models.weights import load_encoder
from neurostorm.train.data import StoreMixSampler

ARGS = ["--config", "tiny", "--quiet", "optim.epochs=3", "data.batch_size=4", "optim.lr=1e-3"]


def stores(store):
    return f"data.stores=[{{path: {store}, max_clips: 12}}]"


def test_store_mix_sampler_weights_caps_and_epochs():
    sampler = StoreMixSampler([10, 100], weights=[2.0, 1.0], caps=[None, 20], seed=0)
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) == len(sampler) == 2 * 10 + 20
    assert sum(i < 10 for i in first) == 20 and len({i for i in first if i >= 10}) == 20
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first and second != first


def test_pretraining_lowers_held_out_loss_and_exports_an_encoder(labelled_store, tmp_path):
    run = tmp_path / "pre"
    assert main(["pretrain", *ARGS, stores(labelled_store), "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val_loss", "val_loss_mean_predictor", "train_loss_epoch"} <= metrics.keys()
    log = pd.read_csv(run / "logs" / "metrics.csv")
    val = log[["epoch", "val_loss"]].dropna().groupby("epoch")["val_loss"].mean()
    assert len(val) == 3 and val.iloc[-1] < val.iloc[0]
    assert (run / "figures" / "loss_curves.png").exists()
    encoder = load_encoder(run / "model")
    assert encoder.config.img_size == (48, 48, 48)
    assert json.loads((run / "model" / "config.json").read_text())["preprocessing"]["grid"]["name"] == \
        "mni152-fsl-4mm-48"


def test_pretraining_on_simulated_bold_beats_the_mean_predictor_on_held_out_subjects(realistic_store, tmp_path):
    run = tmp_path / "pre"
    argv = ["pretrain", "--config", "tiny", "--quiet", "optim.epochs=2", "optim.lr=3e-3",
            f"data.stores=[{{path: {realistic_store}, max_clips: 64}}]", "--out", str(run)]
    assert main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    # masked reconstruction on subjects never trained on, against predicting each clip's mean intensity
    assert metrics["val_loss"] < 0.6 * metrics["val_loss_mean_predictor"], metrics


def test_resume_after_sigkill_reaches_the_same_weights(labelled_store, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    def command(out, *extra):
        return [sys.executable, "-m", "neurostorm.cli", "pretrain", *ARGS, "optim.epochs=2", stores(labelled_store),
                "--out", str(out), *extra]  # killed after epoch 0, resumed for epoch 1

    subprocess.run(command(straight), check=True, capture_output=True)
    child = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, log = killed / "checkpoints" / "last.ckpt", killed / "logs" / "metrics.csv"

    def first_epoch_logged() -> bool:  # its checkpoint and its end-of-epoch row are on disk
        return last.exists() and log.exists() and "train_loss_epoch" in log.read_text()

    deadline = time.time() + 300
    while not first_epoch_logged() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert last.exists() and not (killed / "model").exists(), "the run was not interrupted after a checkpoint"
    subprocess.run(command(killed, "--resume"), check=True, capture_output=True)
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    # the same weights to float32 rounding: the resumed process may sum in another order (seen: 2.4e-7 at
    # most); a resume that replayed or skipped a step differs by ~1e-3
    different = [k for k in a if not torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6)]
    assert not different, different[:5]
    # the resumed run's CSV log holds every epoch, the ones before the crash included, as the straight run's
    logs = [pd.read_csv(run / "logs" / "metrics.csv") for run in (straight, killed)]
    assert sorted(logs[1]["epoch"].unique()) == [0, 1]
    pd.testing.assert_frame_equal(*(log.sort_values(["step", "epoch"]).reset_index(drop=True) for log in logs),
                                  check_like=True)


def test_ddp_on_two_cpu_processes_shards_the_data_and_keeps_weights_equal(labelled_store, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "neurostorm.cli", "pretrain", *ARGS, "optim.epochs=1", "data.random_crop=false",
               stores(labelled_store), "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.strategy=ddp", "trainer.record_samples=true", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [pd.read_csv(run / "samples" / f"rank{r}.tsv", sep="\t") for r in (0, 1)]
    clips = [set(zip(s["run_id"], s["start"], strict=True)) for s in seen]
    assert clips[0] and clips[1] and not clips[0] & clips[1]
    assert len(clips[0]) + len(clips[1]) == 12  # all 12 clips of the epoch, 6 per process
    weights = [(run / "samples" / f"rank{r}.weights").read_text() for r in (0, 1)]
    assert weights[0] == weights[1]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_an_epoch_that_waits_on_data_is_warned_about_on_a_gpu(device):
    """Steps of 2 ms after waits of 8 ms: 80 % of the epoch spent waiting, over data.stall_share 20 %."""
    import warnings
    from types import SimpleNamespace

    from neurostorm.train.trainer import DataWait

    wait = DataWait(stall_share=0.2)
    trainer, module = SimpleNamespace(current_epoch=0), SimpleNamespace(device=torch.device(device))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wait.on_train_epoch_start(trainer, module)
        for step in range(DataWait.MIN_STEPS):
            time.sleep(0.008)
            wait.on_train_batch_start(trainer, module, None, step)
            time.sleep(0.002)
            wait.on_train_batch_end(trainer, module, None, None, step)
        wait.on_train_epoch_end(trainer, module)
    said = [str(w.message) for w in caught if "waited on data" in str(w.message)]
    assert len(said) == (1 if device == "cuda" else 0)
    if said:
        assert "data.num_workers" in said[0] and re.search(r"waited on data (7\d|8\d|9\d)%", said[0])
