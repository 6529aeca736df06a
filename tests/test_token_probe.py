"""Probes over a frozen encoder's tokens: what an attentive probe reads that a probe of the mean cannot, the
token cache, stages, and the probe through finetune and compare."""

import json
import warnings

import numpy as np
import pytest
import torch

from neurostorm.cli import main
from neurostorm.evaluation.metrics import classification_metrics
from neurostorm.evaluation.target import Target
from neurostorm.models import build_model
from neurostorm.models.linear import fit_linear, linear_outputs
from neurostorm.train.config import load_config
from neurostorm.train.data import LabelledClips
from neurostorm.train.probe import cached_features, tokens_split
from neurostorm.train.token_probe import fit_token_probe
from neurostorm.workflows.compare import Method


def planted_tokens(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Clips of 16 tokens × 8 channels: noise, a fixed code per position (as positional tables give), and
    the label at position 5 (channel 0 at +2 for class 1, −2 for class 0) mirrored at position 6, so the mean
    token carries nothing of it."""
    codes = np.random.default_rng(0).standard_normal((16, 8)) * 2.0
    codes[:, 0] = 0.0
    y = rng.integers(0, 2, n)
    tokens = rng.standard_normal((n, 16, 8)) + codes
    sign = 2.0 * (2 * y - 1)
    tokens[:, 5, 0] += sign
    tokens[:, 6, 0] -= sign
    return {"output": tokens.astype(np.float32), "subject": np.array([f"s{i}" for i in range(n)]), "y": y}


def test_an_attentive_probe_reads_a_label_in_one_token_where_the_mean_token_has_none():
    rng = np.random.default_rng(1)
    train, val, test = planted_tokens(512, rng), planted_tokens(128, rng), planted_tokens(256, rng)
    fitted = fit_token_probe("attention", train, val, Target(stratified=True), 2, steps=200)
    attentive = classification_metrics(fitted.outputs(test["output"]), test["y"], 2)["balanced_accuracy"]
    linear = fit_linear(train["output"].mean(1), train["y"], train["subject"], "classification")
    mean = classification_metrics(linear_outputs(linear, test["output"].mean(1), "classification", 2), test["y"],
                                  2)["balanced_accuracy"]
    assert attentive >= 0.9 and mean <= 0.6, (attentive, mean)
    assert fitted.learning_rate in (1e-3, 1e-2) and 1 <= fitted.step <= 200


def test_stage_tokens_are_a_stage_before_its_merging_and_the_last_is_forward():
    encoder = build_model("neurostorm-tiny", embed_dim=8).eval()
    x = torch.randn(1, 1, 48, 48, 48, 20)
    with torch.no_grad():
        assert encoder.stage_tokens(x, 1).shape == (1, 8, 8, 8, 20, 8)
        assert encoder.stage_tokens(x, 2).shape == (1, 4, 4, 4, 20, 16)
        assert torch.equal(encoder.stage_tokens(x, 4), encoder(x))
    with pytest.raises(ValueError, match=r"stage 5: the model has stages 1 to 4 \(widths 8, 16, 32, 64\)"):
        encoder.stage_tokens(x, 5)


def test_the_attentive_probe_runs_as_a_finetune_of_a_stage_s_tokens(labelled_store, tmp_path, capsys):
    settings = ["finetune", "--config", "tiny", f"data.stores=[{labelled_store}]", "task.label=sex", "mode=probe",
                "probe=attention", "probe_steps=40", "--quiet"]
    run = tmp_path / "attentive"
    assert main([*settings, "probe_stage=3", "model.overrides={embed_dim: 8}", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    task = metrics["task"]
    assert (task["probe"], task["probe_stage"], task["tokens_per_clip"]) == ("attention", 3, 8 * 20)
    assert task["trainable_parameters"] > 0 and 0 <= metrics["balanced_accuracy"]["value"] <= 1
    assert (run / "tokens-stage3.npz").exists() and (run / "figures" / "roc.png").exists()
    assert main([*settings, "probe_stage=7", "--out", str(tmp_path / "x")]) == 2
    assert "probe_stage: neurostorm-tiny has no stage 7: its stages are 1 to 4 (widths 16, 32, 64, 128)" in \
        capsys.readouterr().err
    assert main([*settings, "pooling=cov", "--out", str(tmp_path / "y")]) == 2
    assert "pooling=cov pools whole runs: use one or the other" in capsys.readouterr().err
    assert main([*settings, "task.kind=reidentification", "--out", str(tmp_path / "z")]) == 2
    assert "probe=attention and probe_stage choose the head of mode=probe over an encoder's tokens, for a label " \
           "or task state" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert main(["finetune", "--config", "tiny", f"data.stores=[{labelled_store}]", "task.label=sex", "probe=mlp",
                 "--quiet", "--out", str(tmp_path / "w")]) == 2
    assert "mode=full trains the encoder itself" in capsys.readouterr().err


def test_cached_tokens_equal_fresh_ones(labelled_store, tmp_path):
    config = load_config("tiny", [f"data.stores=[{labelled_store}]", "task.label=sex"])
    data = LabelledClips(config, tmp_path, Target(stratified=True))
    encoder = build_model("neurostorm-tiny", embed_dim=8)
    computed = cached_features(encoder, data, tmp_path, 2)
    read = cached_features(encoder, data, tmp_path, 2)
    fresh = tokens_split(encoder, data, "val", 2)
    assert computed["val"]["output"].shape[1:] == (4 * 4 * 4 * 20, 16)
    for key in ("output", "subject", "run_id", "start", "y"):
        assert np.array_equal(read["val"][key], fresh[key]) and np.array_equal(computed["val"][key], fresh[key])


def test_the_method_form_names_token_heads_and_run_poolings_apart():
    attentive, pooled = Method.parse("neurostorm-tiny@pre:probe+attention"), Method.parse("neurostorm-tiny:probe+cov")
    assert (attentive.probe, attentive.pooling) == ("attention", "mean") and Method.parse(attentive.spec) == attentive
    assert (pooled.probe, pooled.pooling) == ("linear", "cov") and Method.parse(pooled.spec) == pooled
    assert attentive.applies_to("task_state") and not attentive.applies_to("image_retrieval")
    assert not Method.parse("fc-linear:probe+mlp").applies_to("classification")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_config("tiny", ["mode=probe", "pooling=attention"]).pooling == "clip_attention"
    assert "pooling=attention is now pooling=clip_attention" in str(caught[0].message)
    with pytest.raises(Exception, match="probe must be one of linear, attention, mlp"):
        load_config("tiny", ["probe=transformer"])
