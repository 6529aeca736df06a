"""LoRA: the adapted forward equals the merged layers', only adapters and head train, and a run exports a
plain encoder that ``evaluate`` reads back."""

import json

import torch

from neurostorm.cli import main
from neurostorm.models import build_model, count_parameters
from neurostorm.models.heads import ClassificationHead
from neurostorm.models.lora import LoRALinear, lora_tuning, merge_lora
from neurostorm.models.weights import load_pretrained
from neurostorm.workflows.compare import Method


def test_merged_weights_compute_the_adapted_forward_and_only_adapters_train():
    torch.manual_seed(0)
    encoder = build_model("neurostorm-tiny").eval()
    head = ClassificationHead(encoder.out_dim, 2)
    plain = count_parameters(encoder)
    report = lora_tuning(encoder, head, rank=4, alpha=8.0)
    adapted = [m for m in encoder.modules() if isinstance(m, LoRALinear)]
    assert len(adapted) == 2 * 8  # in_proj and out_proj of the Mamba layer of each of the 8 blocks
    assert report.prompts == sum(4 * (m.base.in_features + m.base.out_features) for m in adapted)
    assert report.encoder == plain and report.trainable == report.prompts + count_parameters(head)
    assert all(p.requires_grad == name.endswith(("lora_a", "lora_b")) for name, p in encoder.named_parameters())
    x = torch.randn(1, 1, 48, 48, 48, 4)
    with torch.no_grad():
        before = encoder.encode(x)
        for layer in adapted:  # B starts at 0 (the pretrained function); give it a value
            layer.lora_b.normal_(std=0.05)
        tuned = encoder.encode(x)
        assert not torch.allclose(tuned, before, atol=1e-4)
        assert merge_lora(encoder) == len(adapted)
        assert not any(isinstance(m, LoRALinear) for m in encoder.modules())
        assert torch.allclose(encoder.encode(x), tuned, atol=1e-5)


def test_lora_runs_end_to_end_and_exports_a_plain_encoder(labelled_store, tmp_path, capsys):
    run = tmp_path / "lora"
    assert main(["finetune", "--config", "tiny", "--out", str(run), "--quiet", f"data.stores=[{labelled_store}]",
                 "data.split_fractions=[0.5,0.1,0.4]", "task.label=sex", "mode=lora", "lora_rank=2",
                 "optim.epochs=1"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    # r · (in + out) per projection: in_proj d → 4d, out_proj 2d → d; rank 2, two blocks per stage
    adapters = sum(2 * (5 * d + 3 * d) * 2 for d in (16, 32, 64, 128))
    assert metrics["task"]["mode"] == "lora" and metrics["task"]["trainable_parameters"] == adapters + 129
    assert count_parameters(load_pretrained(run / "model")) == count_parameters(build_model("neurostorm-tiny"))
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["balanced_accuracy"] == metrics["balanced_accuracy"]
    assert Method.parse("neurostorm-tiny@runs/pre/model:lora").mode == "lora"
