"""Baselines: SwiFT on the shared grid code, the connectome models, FC + linear, and ``neurostorm compare``."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from neurostorm.cli import main
from neurostorm.data.datasets import FCDataset
from neurostorm.errors import InputError
from neurostorm.models import build_model, count_parameters
from neurostorm.models.baselines.bnt import clustering_loss
from neurostorm.models.baselines.braingnn import RaGConv, TopKPool, connectome_graph, consistency_loss, topk_loss
from neurostorm.models.baselines.brainnetcnn import EdgeToEdge
from neurostorm.models.baselines.swift import SwiFTConfig, SwinBlock
from neurostorm.models.weights import load_official_checkpoint, load_pretrained, save_pretrained
from neurostorm.train.config import load_config
from neurostorm.workflows.compare import Method, saved_methods

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


def test_reference_sizes_at_264_rois():
    counts = {name: count_parameters(build_model(name)) for name in ("brainnetcnn", "bnt", "braingnn")}
    assert counts == {"brainnetcnn": 16_274_654, "bnt": 9_661_256, "braingnn": 255_744}
    # the reference's E2E layers have one bias, ours one per filter: 32 + 64 + 64 + 64 more
    assert counts["brainnetcnn"] - sum(build_model("brainnetcnn").config.e2e_channels) == 16_274_430
    bnt = build_model("bnt")
    assert bnt.config.pooling == (132, 26) and bnt.identity.shape == (264, 32)
    assert all(layer.self_attn.in_proj_bias is not None for layer in bnt.transformers)  # biases kept


def test_bnt_assignment_is_the_squared_projection_rule_on_orthonormal_centres():
    torch.manual_seed(0)
    bnt = build_model("bnt-tiny", n_rois=32)
    readout = bnt.readouts[0]
    centres = readout.centres.detach()
    assert centres.shape == (16, 40) and not readout.centres.requires_grad  # frozen, as published
    assert torch.allclose(centres @ centres.T, torch.eye(16), atol=1e-5)
    z = torch.randn(3, 32, 40)
    assignment = readout.assign(z)
    expected = torch.softmax((z @ centres.T) ** 2 / centres.norm(dim=1), dim=-1)
    assert torch.allclose(assignment, expected, atol=1e-6)
    assert torch.allclose(assignment.sum(-1), torch.ones(3, 32), atol=1e-6)
    assert torch.allclose(readout.assign(-z), assignment, atol=1e-6)  # squared: the sign of a projection is lost


def test_bnt_clustering_loss_is_finite_and_falls_as_assignments_sharpen():
    torch.manual_seed(0)
    readout = build_model("bnt-tiny", n_rois=32).readouts[0]
    z = torch.nn.Parameter(0.1 * torch.randn(4, 32, 40))
    optimiser = torch.optim.Adam([z], lr=0.05)
    losses = []
    for _ in range(60):
        loss = clustering_loss(readout.assign(z))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses[::10]


def test_bnt_clustering_loss_stays_finite_when_a_cluster_is_chosen_by_no_node():
    """Hard assignments (large projections) can leave a cluster empty; DEC's target divides by each
    cluster's total, which must not turn 0 / 0 into NaN in the loss or its gradient."""
    logits = torch.tensor([[30.0, 0.0, -30.0], [25.0, 1.0, -40.0], [0.0, 28.0, -35.0]], requires_grad=True)
    assignment = torch.softmax(logits, dim=-1)[None]  # (1, 3 nodes, 3 clusters); cluster 3 gets ~0
    assignment = torch.where(assignment < 1e-20, torch.zeros_like(assignment), assignment)  # underflow, exactly
    loss = clustering_loss(assignment)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def ragconv_by_hand(conv, x, edges, rois):
    """Node i: mean over j in N(i) ∪ {i} of softmax_j(e_ij, self-loop 1) · W_{roi_j} x_j, plus the bias."""
    theta1, theta2 = conv.theta1.weight.double(), conv.theta2
    out = torch.zeros(x.shape[0], conv.d_out, dtype=torch.float64)
    for i in range(x.shape[0]):
        sources = [j for j in range(x.shape[0]) if j == i or edges[i, j] != 0]
        logits = torch.tensor([1.0 if j == i else float(edges[i, j]) for j in sources], dtype=torch.float64)
        alpha = torch.softmax(logits, 0)
        for a, j in zip(alpha, sources, strict=True):
            kernel = (theta2.weight.double() @ torch.relu(theta1[:, rois[j]]) + theta2.bias.double())
            out[i] += a * (x[j].double() @ kernel.view(conv.d_in, conv.d_out))
        out[i] = out[i] / len(sources) + conv.bias.double()
    return out


def test_braingnn_kernel_of_node_j_transforms_js_message():
    torch.manual_seed(0)
    conv = RaGConv(4, 3, n_rois=5, communities=2)
    x = torch.randn(5, 4)
    edges = connectome_graph(torch.tensor([[1.0, 0.5, 0.0, -0.2, 0.0], [0.5, 1.0, 0.3, 0.0, 0.0],
                                           [0.0, 0.3, 1.0, 0.0, 0.7], [-0.2, 0.0, 0.0, 1.0, 0.0],
                                           [0.0, 0.0, 0.7, 0.0, 1.0]])[None])[0]
    for rois in (torch.arange(5), torch.tensor([0, 3, 2, 1, 4])):  # then ROIs 1 and 3 swap memberships
        out = conv(x[None], edges[None], rois[None])[0]
        assert torch.allclose(out.double(), ragconv_by_hand(conv, x, edges, rois), atol=1e-5)
    swapped = conv(x[None], edges[None], torch.tensor([[0, 3, 2, 1, 4]]))[0]
    plain = conv(x[None], edges[None], torch.arange(5)[None])[0]
    # node 4 hears only node 2 and itself, whose kernels did not move: unchanged; nodes 0-3 hear 1 or 3
    assert torch.allclose(swapped[4], plain[4]) and not torch.allclose(swapped[:4], plain[:4])


def test_braingnn_pooling_and_its_three_regularisers_by_hand():
    torch.manual_seed(0)
    pool = TopKPool(2, 0.5)
    with torch.no_grad():
        pool.weight.copy_(torch.tensor([3.0, 4.0]))  # ‖w‖ = 5
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, -2.0]]])
    edges = torch.rand(1, 5, 5)
    kept, kept_edges, rois, score = pool(x, edges, torch.arange(5)[None])
    assert torch.allclose(score, torch.tensor([[0.6, 0.8, 1.4, -0.6, -1.6]]))
    assert rois.tolist() == [[2, 1, 0]] and kept_edges.shape == (1, 3, 3)  # ⌈0.5 · 5⌉ = 3 best, best first
    assert torch.allclose(kept, x[:, [2, 1, 0]] * torch.sigmoid(torch.tensor([1.4, 0.8, 0.6]))[None, :, None])
    s = torch.sigmoid(torch.tensor([1.4, 0.8, 0.6, -0.6, -1.6]))
    expected = -torch.log(s[:3]).mean() - torch.log(1 - s[3:]).mean()
    assert torch.isclose(topk_loss(score, 3), expected, atol=1e-6)
    scores = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    sig = torch.sigmoid(scores)
    by_hand = ((sig[0] - sig[1]) ** 2).sum() / 2 * 2 / 4  # class 0: one pair of two subjects, ½Σ_{m,n} / G²
    assert torch.isclose(consistency_loss(scores, torch.tensor([0, 0, 1])), by_hand, atol=1e-6)
    model = build_model("braingnn-tiny", n_rois=5)
    model.encode(torch.randn(3, 5, 5))
    with torch.no_grad():
        unit = sum((p.weight.norm() - 1) ** 2 for p in model.pools)
    losses = model.regularisers(torch.tensor([0, 0, 1]))
    assert set(losses) == {"unit_loss", "topk_loss", "consistency_loss"}
    assert torch.isclose(losses["unit_loss"], unit) and set(model.regularisers(None)) == {"unit_loss", "topk_loss"}


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
    for method, losses in (("bnt-tiny", ["cluster_loss"]), ("braingnn-tiny", ["unit_loss", "topk_loss",
                                                                             "consistency_loss"])):
        logged = pd.read_csv(out / "runs" / method / "logs" / "metrics.csv")  # beside the task loss
        assert all(logged[f"train_{name}_epoch"].notna().any() for name in ["loss", *losses]), method


def test_bad_connectivity_and_weights_for_another_atlas_are_refused(realistic_store, tmp_path, capsys):
    roi = tmp_path / "roi"
    assert main(["roi", str(realistic_store), "--atlas", "dosenbach160", "--out", str(roi), "--quiet"]) == 0
    with np.load(roi / "fc.npz") as fc:
        arrays = dict(fc)
    run_ids = arrays["run_id"].tolist()
    for edit, problem in ((lambda m: m.__setitem__((3, 0, 1), np.nan), "NaN or Inf in its connectivity matrix"),
                          (lambda m: m.__setitem__((3, 0, 1), 5.0), "connectivity matrix not symmetric")):
        broken = {k: v.copy() for k, v in arrays.items()}
        edit(broken["fisher_z"])
        np.savez(roi / "fc.npz", **broken)
        with pytest.raises(InputError, match=f"fc.npz: run {run_ids[3]}: {problem}"):
            FCDataset(roi)
    weights = tmp_path / "bnt-32"
    save_pretrained(build_model("bnt-tiny", n_rois=32), weights)
    capsys.readouterr()
    assert main(["finetune", "--config", "tiny", "model.name=bnt-tiny", f"model.init={weights}", "task.label=sex",
                 f"data.stores=[{realistic_store}]", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "weights for 32 ROIs, but atlas power264 gives 264" in capsys.readouterr().err
    checkpoint = tmp_path / "brainnetcnn.ckpt"  # the reference's BrainNetCNN given as BNT weights: one line, no run
    torch.save({"state_dict": _reference_brainnetcnn_state(264, (8, 8), 16, 32, 32, 30, classes=2)}, checkpoint)
    assert main(["finetune", "--config", "tiny", "model.name=bnt-tiny", f"model.init={checkpoint}", "task.label=sex",
                 f"data.stores=[{realistic_store}]", "--out", str(tmp_path / "run2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"neurostorm finetune: {checkpoint}: not a checkpoint of this BNT: 0 of its"), err
    assert not (tmp_path / "run2").exists()


def reference_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """BNT's weights under the reference's module paths (its Lightning module holds the network as ``model``),
    without the transformer biases its layers lack."""
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith("transformers.") and name.endswith("bias"):
            continue
        parts = name.split(".")
        if name.startswith(("transformers.", "readouts.")):
            block, rest = parts[1], ".".join(parts[2:])
            prefix = "transformer" if parts[0] == "transformers" else "dec"
            rest = "assignment.cluster_centers" if rest == "centres" else rest
            state[f"model.attention_list.{block}.{prefix}.{rest}"] = value
        else:
            state["model." + {"identity": "node_identity"}.get(name, name.replace("reduce.", "dim_reduction.")
                                                                .replace("mlp.", "fc."))] = value
    state["model.fc.6.weight"], state["model.fc.6.bias"] = torch.randn(2, 16), torch.randn(2)  # its task layer
    return state


def test_a_reference_bnt_checkpoint_loads_by_name_and_computes_the_same_function(tmp_path):
    torch.manual_seed(0)
    reference = build_model("bnt-tiny", n_rois=32).eval()
    with torch.no_grad():
        for layer in reference.transformers:  # what the reference's bias-less layers compute
            for name, parameter in layer.named_parameters():
                if name.endswith("bias"):
                    parameter.zero_()
    path = tmp_path / "bnt.ckpt"
    torch.save({"state_dict": reference_state(reference), "hyper_parameters": {"num_rois": 32}}, path)
    ours = build_model("bnt-tiny", n_rois=32).eval()
    report = load_official_checkpoint(path, ours)
    assert sorted(report.unexpected) == ["model.fc.6.bias", "model.fc.6.weight"]  # the task layer: our head
    assert all(name.startswith("transformers.") and name.endswith("bias") for name in report.missing)
    fc = torch.randn(3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.encode(fc), reference.encode(fc), atol=1e-6)
    with pytest.raises(InputError, match="the checkpoint was built with other model sizes"):
        load_official_checkpoint(path, build_model("bnt-tiny", n_rois=40))


def test_a_reference_braingnn_checkpoint_loads_by_name(tmp_path):
    torch.manual_seed(0)
    reference = build_model("braingnn-tiny", n_rois=12).eval()
    state = {}
    for block in (1, 2):  # the reference's names: nn1 = θ (also held by conv1 as conv1.nn), pool weights (1, d)
        conv, pool = reference.convs[block - 1], reference.pools[block - 1]
        for prefix in (f"model.nn{block}", f"model.conv{block}.nn"):
            state[f"{prefix}.0.weight"] = conv.theta1.weight
            state[f"{prefix}.2.weight"], state[f"{prefix}.2.bias"] = conv.theta2.weight, conv.theta2.bias
        state[f"model.conv{block}.bias"], state[f"model.pool{block}.weight"] = conv.bias, pool.weight[None]
    for ours, theirs in ((0, "fc1"), (2, "bn1"), (4, "fc2"), (6, "bn2")):
        for name, value in reference.classifier[ours].state_dict().items():
            state[f"model.{theirs}.{name}"] = value
    state["model.fc3.weight"] = torch.randn(2, 64)
    torch.save({"state_dict": {k: v.detach().clone() for k, v in state.items()}}, tmp_path / "gnn.ckpt")
    ours = build_model("braingnn-tiny", n_rois=12).eval()
    report = load_official_checkpoint(tmp_path / "gnn.ckpt", ours)
    assert report.missing == [] and report.unexpected == ["model.fc3.weight"]
    fc = torch.randn(4, 12, 12)
    fc = (fc + fc.transpose(1, 2)) / 2
    with torch.no_grad():
        assert torch.allclose(ours.encode(fc), reference.encode(fc), atol=1e-6)


def _second_block_graph(model, fc: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.convs[1].register_forward_hook(lambda module, args, out: seen.append(args[1]))
    with torch.no_grad():
        model.encode(fc)
    handle.remove()
    return seen[0]  # (B, k, k) edge weights the second Ra-GConv reads


def test_braingnn_second_block_reads_the_pooled_graph_or_its_two_hop_augmentation():
    torch.manual_seed(0)
    fc = torch.randn(2, 10, 10)
    fc = (fc + fc.transpose(1, 2)) / 2
    model = build_model("braingnn-tiny", n_rois=10).eval()
    rois = torch.arange(10).expand(2, -1)
    with torch.no_grad():
        _, pooled, _, _ = model.pools[0](model.convs[0](fc, connectome_graph(fc), rois), connectome_graph(fc), rois)
    assert torch.equal(_second_block_graph(model, fc), pooled)  # the reference code: the pooled graph unchanged
    hop = build_model("braingnn-tiny", n_rois=10, two_hop=True).eval()
    hop.load_state_dict(model.state_dict())
    eye = torch.eye(pooled.shape[1])
    two_hops = ((pooled + eye) @ (pooled + eye)) * (1 - eye)  # paths of one or two edges, no self-loop
    assert torch.allclose(_second_block_graph(hop, fc), two_hops)
    assert not torch.allclose(two_hops, pooled)


@pytest.mark.parametrize(("name", "setting", "before"), [("brainnetcnn-tiny", "head_hidden", 0),
                                                         ("braingnn-tiny", "two_hop", True)])
def test_weights_saved_before_a_setting_existed_load_with_the_function_they_were_trained_with(tmp_path, name,
                                                                                               setting, before):
    model = build_model(name, n_rois=10, **{setting: before}).eval()
    folder = save_pretrained(model, tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    del config["config"][setting]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_pretrained(folder).eval()
    fc = torch.randn(2, 10, 10)
    assert getattr(loaded.config, setting) == before
    with torch.no_grad():
        assert torch.equal(loaded.encode(fc + fc.transpose(1, 2)), model.encode(fc + fc.transpose(1, 2)))


def _reference_brainnetcnn_state(n_rois: int, e2e: tuple[int, ...], e2n: int, n2g: int, hidden: int, head: int,
                                 classes: int) -> dict[str, torch.Tensor]:
    """Random weights in the reference code's current BrainNetCNN layout."""
    state, channels = {}, (1, *e2e)
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        state[f"model.e2e_layers.{i}.row_conv.weight"] = torch.randn(c_out, c_in, 1, n_rois) / n_rois
        state[f"model.e2e_layers.{i}.col_conv.weight"] = torch.randn(c_out, c_in, n_rois, 1) / n_rois
        state[f"model.e2e_layers.{i}.bias"] = torch.randn(c_out) / 10
    for name, shape in (("e2n", (e2n, e2e[-1], 1, n_rois)), ("n2g", (n2g, e2n, n_rois, 1))):
        state[f"model.{name}.conv.weight"] = torch.randn(*shape) / n_rois
        state[f"model.{name}.conv.bias"] = torch.randn(shape[0]) / 10
    for index, (a, b) in ((1, (n2g, hidden)), (4, (hidden, head)), (6, (head, classes))):
        state[f"model.fc.{index}.weight"], state[f"model.fc.{index}.bias"] = torch.randn(b, a) / a, torch.randn(b)
    return state


def _brainnetcnn_float64(state: dict[str, torch.Tensor], fc: torch.Tensor) -> torch.Tensor:
    """The reference's embedding (before its task layer) written out with sums, in float64."""
    w = {k.removeprefix("model."): v.double() for k, v in state.items()}
    act = torch.nn.functional.leaky_relu
    x = fc.double()[:, None]  # (B, 1, R, R)
    for i in range(sum(k.endswith("row_conv.weight") for k in w)):
        row, col = w[f"e2e_layers.{i}.row_conv.weight"][:, :, 0], w[f"e2e_layers.{i}.col_conv.weight"][..., 0]
        # out[o, i, j] = Σ_c Σ_k row[o, c, k] x[c, i, k] + Σ_c Σ_k col[o, c, k] x[c, k, j] + bias[o]
        x = act(torch.einsum("ock,bcik->boi", row, x)[..., None] + torch.einsum("ock,bckj->boj", col, x)[:, :, None]
                + w[f"e2e_layers.{i}.bias"][None, :, None, None], 0.33)
    nodes = act(torch.einsum("ock,bcik->boi", w["e2n.conv.weight"][:, :, 0], x) + w["e2n.conv.bias"][:, None], 0.33)
    graph = act(torch.einsum("ock,bck->bo", w["n2g.conv.weight"][..., 0], nodes) + w["n2g.conv.bias"], 0.33)
    hidden = act(graph @ w["fc.1.weight"].T + w["fc.1.bias"], 0.33)
    return act(hidden @ w["fc.4.weight"].T + w["fc.4.bias"], 0.33)


def test_a_reference_brainnetcnn_checkpoint_loads_and_computes_the_same_embedding(tmp_path):
    torch.manual_seed(0)
    sizes = {"e2e_channels": (4, 6), "e2n_channels": 8, "n2g_channels": 16, "hidden": 12, "head_hidden": 5}
    state = _reference_brainnetcnn_state(14, (4, 6), 8, 16, 12, 5, classes=3)
    torch.save({"state_dict": state, "hyper_parameters": {"num_rois": 14}}, tmp_path / "cnn.ckpt")
    model = build_model("brainnetcnn", n_rois=14, **sizes).eval()
    report = load_official_checkpoint(tmp_path / "cnn.ckpt", model)
    assert report.missing == ["e2e.0.col.bias", "e2e.1.col.bias"]  # the reference's one bias went to the row filter
    assert sorted(report.unexpected) == ["model.fc.6.bias", "model.fc.6.weight"]  # its task layer: our head
    fc = torch.randn(3, 14, 14)
    fc = (fc + fc.transpose(1, 2)) / 2
    with torch.no_grad():
        assert torch.allclose(model.encode(fc).double(), _brainnetcnn_float64(state, fc), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="other model sizes"):  # another ROI count: nothing loaded
        load_official_checkpoint(tmp_path / "cnn.ckpt", build_model("brainnetcnn", n_rois=16, **sizes))


def test_a_checkpoint_of_another_model_or_with_differing_duplicates_is_refused_whole(tmp_path):
    torch.manual_seed(0)
    state = _reference_brainnetcnn_state(12, (8, 8), 16, 32, 32, 30, classes=2)
    torch.save({"state_dict": state}, tmp_path / "cnn.ckpt")
    gnn = build_model("braingnn-tiny", n_rois=12)
    before = {k: v.clone() for k, v in gnn.state_dict().items()}
    with pytest.raises(InputError, match=r"cnn\.ckpt.*not a checkpoint of this BrainGNN: 0 of its \d+ tensors found"):
        load_official_checkpoint(tmp_path / "cnn.ckpt", gnn)
    assert all(torch.equal(before[k], v) for k, v in gnn.state_dict().items())
    with pytest.raises(InputError, match="not a checkpoint of this BNT"):
        load_official_checkpoint(tmp_path / "cnn.ckpt", build_model("bnt-tiny", n_rois=12))
    cnn = build_model("brainnetcnn-tiny", n_rois=12)
    partial = {k: v for k, v in state.items() if not k.startswith("model.n2g")}
    torch.save({"state_dict": partial}, tmp_path / "partial.ckpt")
    with pytest.raises(InputError, match=r"2 missing \(e\.g\. n2g\.bias, n2g\.weight\)"):
        load_official_checkpoint(tmp_path / "partial.ckpt", cnn)
    reference = build_model("braingnn-tiny", n_rois=12)
    duplicated = {"model.nn1.0.weight": reference.convs[0].theta1.weight.detach(),
                  "model.conv1.nn.0.weight": reference.convs[0].theta1.weight.detach() + 1}
    torch.save({"state_dict": duplicated}, tmp_path / "dup.ckpt")
    with pytest.raises(InputError, match=r"model\.nn1\.0\.weight and model\.conv1\.nn\.0\.weight are both "
                                         r"convs\.0\.theta1\.weight of BrainGNN but differ"):
        load_official_checkpoint(tmp_path / "dup.ckpt", gnn)
