"""Baselines: SwiFT on the shared grid code, the connectome models, FC + linear, and ``neurostorm compare``."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from neurostorm.cli import main
from neurostorm.models import build_model, count_parameters
from neurostorm.models.baselines.braingnn import TopKPool, sparse_graph
from neurostorm.models.baselines.brainnetcnn import EdgeToEdge
from neurostorm.models.baselines.swift import SwiFTConfig, SwinBlock
from neurostorm.models.weights import load_pretrained, save_pretrained
from neurostorm.tasks.compare import Method, saved_methods
from neurostorm.train.config import load_config

CONNECTOME_MODELS = ["brainnetcnn-tiny", "bnt-tiny", "braingnn-tiny"]


def test_shifted_attention_never_mixes_tokens_that_wrapped_around():
    config = SwiFTConfig(img_size=(48, 48, 48), embed_dim=8, depths=(2, 2, 2, 2), heads=(2, 2, 2, 2))
    block = SwinBlock(8, (4, 4, 4, 4), True, config, heads=2).eval()  # grid 8⁴, shift 2: window 4..7 = {6, 7, 0, 1}
    x = torch.randn(1, 8, 8, 8, 8, 8)
    base = block.mix(x)
    far = x.clone()
    far[0, 0, 0, 0, 0] += 10.0  # wraps into the last window beside positions 6 and 7
    near = x.clone()
    near[0, 6, 6, 6, 6] += 10.0  # same window and same side of the wrap as (7, 7, 7, 7)
    with torch.no_grad():
        assert torch.allclose(block.mix(far)[0, 7, 7, 7, 7], base[0, 7, 7, 7, 7], atol=1e-6)
        assert not torch.allclose(block.mix(near)[0, 7, 7, 7, 7], base[0, 7, 7, 7, 7], atol=1e-3)
    unshifted = SwinBlock(8, (4, 4, 4, 4), False, config, heads=2).eval()
    with torch.no_grad():  # without a shift the two positions never share a window either
        assert torch.allclose(unshifted.mix(far)[0, 7, 7, 7, 7], unshifted.mix(x)[0, 7, 7, 7, 7], atol=1e-6)


def test_swift_reuses_the_encoder_grid_and_round_trips_through_safetensors(tmp_path):
    swift, storm = build_model("swift-tiny"), build_model("neurostorm-tiny")
    shared = {k for k in storm.state_dict() if "mamba" not in k}
    assert shared <= set(swift.state_dict())  # patch embedding, positions, norms, MLPs, merging: one implementation
    assert count_parameters(build_model("swift-base")) == 4_314_636
    x = torch.randn(2, 1, 48, 48, 48, 8)
    swift.eval()
    save_pretrained(swift, tmp_path / "swift")
    assert torch.equal(load_pretrained(tmp_path / "swift").eval().encode(x), swift.encode(x))


def test_edge_to_edge_is_a_row_plus_column_filter():
    layer = EdgeToEdge(1, 1, 5)
    a = torch.randn(1, 1, 5, 5)
    w_row, w_col = layer.row.weight[0, 0, 0], layer.col.weight[0, 0, :, 0]
    expected = (a[0, 0] @ w_row)[:, None] + (w_col @ a[0, 0])[None, :] + layer.row.bias + layer.col.bias
    assert torch.allclose(layer(a)[0, 0], expected, atol=1e-6)


def test_bnt_centres_start_orthonormal_and_braingnn_pools_by_roi():
    bnt = build_model("bnt-tiny", n_rois=32)
    centres = bnt.readout.centres.detach()
    assert torch.allclose(centres @ centres.T, torch.eye(len(centres)), atol=1e-5)
    fc = torch.randn(2, 32, 32)
    adjacency = sparse_graph(fc, 0.1)
    assert torch.allclose(adjacency.sum(2)[adjacency.sum(2) > 0], torch.ones(1))
    assert ((adjacency > 0).sum() / (2 * 32 * 32)) == pytest.approx(0.1, abs=0.02)
    h, adj, rois = TopKPool(4, 0.5)(torch.randn(2, 32, 4), adjacency, torch.arange(32).expand(2, -1))
    assert h.shape == (2, 16, 4) and adj.shape == (2, 16, 16) and len(set(rois[0].tolist())) == 16


def coupling_matrices(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fisher-z FC (n, 32, 32) of noise series; class 1 couples ROIs 0-11 through a shared signal."""
    labels = rng.integers(0, 2, n)
    series = rng.standard_normal((n, 60, 32))
    series[:, :, :12] += np.where(labels[:, None, None] == 1, 0.8, 0.0) * rng.standard_normal((n, 60, 1))
    fc = np.stack([np.arctanh(np.clip(np.corrcoef(s.T), -0.99, 0.99)) for s in series])
    return torch.tensor(fc, dtype=torch.float32), torch.tensor(labels)


@pytest.mark.parametrize("name", CONNECTOME_MODELS)
def test_connectome_models_learn_a_connectivity_difference(name):
    """Trained on 160 matrices for 80 steps; held-out accuracy well above chance."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    (x, y), (x_test, y_test) = coupling_matrices(rng, 160), coupling_matrices(rng, 80)
    model = build_model(name, n_rois=32)
    head = torch.nn.Linear(model.out_dim, 1)
    optimiser = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3)
    for step in range(80):
        batch = torch.arange(step * 16, step * 16 + 16) % len(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(model.encode(x[batch]))[:, 0],
                                                                    y[batch].float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = ((head(model.encode(x_test))[:, 0] > 0).long() == y_test).float().mean()
    assert accuracy > 0.8, accuracy


def test_fc_linear_learns_a_connectivity_difference_and_counts_its_weights():
    rng = np.random.default_rng(0)
    (x, y), (x_test, y_test) = coupling_matrices(rng, 160), coupling_matrices(rng, 80)
    model = build_model("fc-linear").fit(x.numpy(), y.numpy(), groups=np.arange(len(x)))
    accuracy = ((model.outputs(x_test.numpy())[:, 0] > 0) == y_test.numpy()).mean()
    assert accuracy > 0.8, accuracy
    assert model.n_parameters == 32 * 31 // 2 + 1  # one weight per edge and the intercept


def test_swift_learns_sex_like_neurostorm(labelled_store, tmp_path):
    # attention wants a lower learning rate than the tiny preset's 1e-3, which collapses to one class here
    argv = ["finetune", "--config", "tiny", "model.name=swift-tiny", "task.label=sex", "optim.epochs=8",
            "optim.lr=3e-4", f"data.stores=[{labelled_store}]", "data.split_fractions=[0.5,0.1,0.4]",
            "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["balanced_accuracy"]["ci_low"] > 0.5, metrics["balanced_accuracy"]


def test_method_specs():
    assert Method.parse("neurostorm-tiny@runs/pre/model:prompt") == Method(
        "neurostorm-tiny@runs/pre/model:prompt", "neurostorm-tiny", "runs/pre/model", "prompt")
    assert Method.parse("fc-linear").mode == "full"
    assert not Method.parse("bnt").applies_to("task_state")
    with pytest.raises(ValueError, match="unknown model 'swft'"):
        Method.parse("swft")


def test_compare_runs_every_model_on_one_split(realistic_store, tmp_path, capsys):
    out = tmp_path / "cmp"
    models = ",".join(["neurostorm-tiny", "fc-linear", *CONNECTOME_MODELS])
    assert main(["compare", "--task", "tiny", "--models", models, "task.label=sex", "optim.epochs=1",
                 f"data.stores=[{realistic_store}]", "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "table.csv")
    assert table["method"].tolist() == models.split(",")
    test_subjects = sorted(json.loads((out / "split.json").read_text())["test"])
    for method in table["method"]:
        tested = pd.read_csv(out / "runs" / method / "predictions.csv", dtype={"subject": str})["subject"]
        assert sorted(tested.unique()) == test_subjects, method
    assert (table["balanced_accuracy_chance"] == 0.5).all() and table["trainable_parameters"].gt(0).all()
    assert {"accuracy", "f1_macro", "auroc", "f1_macro_ci_low", "test_subjects"} <= set(table.columns)
    markdown = (out / "table.md").read_text()
    assert markdown.count("\n| ") == len(table) and (out / "comparison.png").exists()
    assert "accuracy [95 % CI]" in markdown and "f1_macro [95 % CI]" in markdown
    # 12 subjects leave 2 for testing: the table says so under its rows
    assert (table["test_subjects"] == 2).all() and "**Warning: 2 test subjects.**" in markdown
    printed = capsys.readouterr()
    assert "| fc-linear |" in printed.out and "compare classification" not in printed.err  # --quiet: no bar
    rerun = load_config(out / "task.yaml")  # the task as run, with its methods: reruns the table alone
    assert rerun.data.split_file == str(out / "split.json") and rerun.task.label == "sex"
    assert [m.spec for m in saved_methods(out / "task.yaml")] == models.split(",")
