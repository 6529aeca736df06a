"""The NeuroSTORM encoder: sizes of the released model, shapes, clip length, checkpointing, heads, prompts."""

import pytest
import torch

from neurostorm import build_model
from neurostorm.models import ClassificationHead, EmbeddingHead, RegressionHead, count_parameters
from neurostorm.models.encoder import zscore_over_time
from neurostorm.models.prompts import prompt_tuning
from neurostorm.models.weights import load_pretrained, save_pretrained

SMALL = {"img_size": (48, 48, 48), "patch_size": (6, 6, 6), "embed_dim": 8}  # token grid 8³ like tiny


def test_base_encoder_and_pretraining_model_have_the_released_parameter_counts():
    encoder = build_model("neurostorm-base")
    assert count_parameters(encoder) == 5_173_020
    counts = encoder.stage_parameter_counts()
    assert counts["patch_embed"] == 7_812 and sum(counts.values()) == 5_173_020
    positional = sum(p.numel() for p in encoder.pos_embeds.parameters())
    merging = sum(p.numel() for s in encoder.layers if s.downsample is not None for p in s.downsample.parameters())
    assert (positional, merging) == (206_640, 439_488)
    assert count_parameters(build_model("neurostorm-mae-base")) == 7_712_892


def test_base_shapes_through_every_stage():
    encoder = build_model("neurostorm-base").eval()
    shapes = []
    for stage in encoder.layers:
        stage.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        pooled, tokens = encoder.encode(torch.randn(1, 1, 96, 96, 96, 20), return_tokens=True)
    assert shapes == [(1, 8, 8, 8, 20, 72), (1, 4, 4, 4, 20, 144), (1, 2, 2, 2, 20, 288), (1, 2, 2, 2, 20, 288)]
    assert pooled.shape == (1, 288) and tokens.shape == (1, 2, 2, 2, 20, 288)
    assert torch.isfinite(pooled).all()


def test_clip_length_can_vary_up_to_the_temporal_table():
    encoder = build_model("neurostorm-tiny", frames=40, **SMALL).eval()
    with torch.no_grad():
        for frames in (20, 40):
            assert encoder.encode(torch.randn(2, 1, 48, 48, 48, frames)).shape == (2, encoder.out_dim)
    with pytest.raises(ValueError, match="up to 40 frames in multiples of 4"):
        encoder.encode(torch.randn(1, 1, 48, 48, 48, 22))
    with pytest.raises(ValueError, match=r"expects \(B, 1, 48, 48, 48, T\)"):
        encoder.encode(torch.randn(1, 1, 96, 96, 96, 20))


def test_each_clip_is_encoded_independently_of_the_batch():
    encoder = build_model("neurostorm-tiny", **SMALL).eval()
    x = torch.randn(3, 1, 48, 48, 48, 8)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(x)[1:2], encoder.encode(x[1:2]), rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build_model("neurostorm-tiny", **SMALL)
    saving = build_model("neurostorm-tiny", checkpoint_blocks=True, **SMALL)
    saving.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 48, 48, 48, 8)
    plain.encode(x).square().sum().backward()
    saving.encode(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), saving.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_heads():
    z = torch.randn(5, 128)
    assert ClassificationHead(128, 2)(z).shape == (5, 1)
    head = ClassificationHead(128, 3)
    assert head(z).shape == (5, 3)
    torch.testing.assert_close(head.probabilities(head(z)).sum(1), torch.ones(5))
    binary = ClassificationHead(128, 2)
    p = binary.probabilities(binary(z))
    assert p.shape == (5, 2) and torch.allclose(p[:, 1], torch.sigmoid(binary(z)[:, 0]))
    assert RegressionHead(128)(z).shape == (5, 1)
    e = EmbeddingHead(128, 16)(z)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))


def test_prompt_tuning_counts_on_the_base_model():
    encoder = build_model("neurostorm-base")
    report = prompt_tuning(encoder, ClassificationHead(288, 2), tokens=50)
    assert report.prompts == 82_800 and report.encoder == 5_173_020
    assert report.trainable == 82_800 + 289
    assert f"{100 * report.prompts / report.encoder:.1f}" == "1.6"


def test_prompt_tuning_trains_only_prompts_and_head():
    torch.manual_seed(0)
    encoder = build_model("neurostorm-tiny", **SMALL)
    head = ClassificationHead(encoder.out_dim, 2)
    prompt_tuning(encoder, head, tokens=4)
    before = {k: v.clone() for k, v in [*encoder.state_dict().items(), *head.state_dict().items()]}
    trainable = [p for p in [*encoder.parameters(), *head.parameters()] if p.requires_grad]
    optimiser = torch.optim.SGD(trainable, lr=0.5)
    x = torch.randn(2, 1, 48, 48, 48, 8)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(head(encoder.encode(x))[:, 0], torch.tensor([0., 1.]))
    loss.backward()
    optimiser.step()
    after = {**encoder.state_dict(), **head.state_dict()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(".prompt") or k.startswith("fc.") for k in changed)
    assert sum(k.endswith(".prompt") for k in changed) == sum(encoder.config.depths)


def test_bf16_autocast_runs_forward_and_backward():
    encoder = build_model("neurostorm-tiny", **SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder.encode(torch.randn(2, 1, 48, 48, 48, 8))
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_voxel_zscore_reads_fluctuations_not_intensity(tmp_path):
    """Each voxel z-scored over the clip: mean 0 and sd 1 in time, background 0, applying it twice changes
    nothing, and the encoder's output ignores a voxel's static intensity (the anatomy) and its scale."""
    x = torch.randn(2, 1, 48, 48, 48, 8)
    x[:, :, :10] = -3.0  # background: one fill in every frame
    z = zscore_over_time(x)
    brain = z[:, :, 10:]
    torch.testing.assert_close(brain.mean(dim=5), torch.zeros_like(brain[..., 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(brain.std(dim=5, correction=0), torch.ones_like(brain[..., 0]), atol=1e-4, rtol=0)
    assert torch.equal(z[:, :, :10], torch.zeros_like(z[:, :, :10]))
    torch.testing.assert_close(zscore_over_time(z), z, atol=1e-5, rtol=0)

    anatomy = 5.0 * torch.rand(1, 1, 48, 48, 48, 1)  # a static image and a gain per voxel
    gain = 0.5 + torch.rand(1, 1, 48, 48, 48, 1)
    for voxel_zscore in (True, False):
        encoder = build_model("neurostorm-tiny", voxel_zscore=voxel_zscore, **SMALL).eval()
        with torch.no_grad():
            same = torch.allclose(encoder.encode(x), encoder.encode(x * gain + anatomy), atol=1e-4, rtol=1e-4)
        assert same is voxel_zscore
    folder = save_pretrained(build_model("neurostorm-tiny", voxel_zscore=True, **SMALL), tmp_path / "model")
    assert load_pretrained(folder).config.voxel_zscore is True  # the input travels with the weights
