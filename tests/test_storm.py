"""STORM masked pretraining: masks, mask tokens, loss, STRD, and that a tiny model can fit one clip."""

import pytest
import torch
from einops import rearrange

from neurostorm import build_model
from neurostorm.models.strd import neighbourhoods, redundancy, strd

SMALL = {"img_size": (32, 32, 32), "patch_size": (4, 4, 4), "embed_dim": 8, "frames": 8}  # token grid 8³ × 8


def small_storm(**overrides):
    return build_model("neurostorm-mae-tiny", **{**SMALL, "strd": False, **overrides})


def smooth_clip():
    axis = torch.linspace(-1, 1, 32)
    volume = torch.sin(3 * axis)[:, None, None] * torch.cos(2 * axis)[None, :, None] * torch.sin(4 * axis)[None, None]
    return volume[None, None, ..., None] * torch.linspace(0.5, 1.5, 8)  # (1, 1, 32, 32, 32, 8)


def test_window_masks_are_seeded_whole_windows_at_the_ratio():
    model = small_storm()
    masks = [model.make_mask(3, 8, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], model.make_mask(3, 8, generator=torch.Generator().manual_seed(8)))
    windows = rearrange(masks[0], "b (nd d) (nh h) (nw w) (nt t) -> b (nd nh nw nt) (d h w t)", d=4, h=4, w=4, t=4)
    assert torch.all(windows.all(-1) | ~windows.any(-1))  # every window fully masked or fully visible
    assert windows.shape[1] == 16 and torch.all(windows.all(-1).sum(1) == 8)  # half of the 16 windows masked


@pytest.mark.parametrize("mode", ["random", "tube"])
def test_random_and_tube_masks(mode):
    model = small_storm(mask_mode=mode, mask_ratio=0.25)
    mask = model.make_mask(2, 8, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (2, 8, 8, 8, 8)
    if mode == "tube":
        assert torch.all(mask.all(-1) | ~mask.any(-1)) and torch.all(mask[..., 0].sum((1, 2, 3)) == 128)
    else:
        assert torch.all(mask.sum((1, 2, 3, 4)) == 1024)


def test_masked_tokens_take_the_mask_token_of_their_window_position():
    model = small_storm()
    tokens = torch.randn(1, 8, 8, 8, 8, 8)
    mask = model.make_mask(1, 8, generator=torch.Generator().manual_seed(1))
    out = model.apply_mask(tokens, mask)
    assert torch.equal(out[~mask], tokens[~mask])
    d, h, w, t = (int(i) for i in mask[0].nonzero()[0])
    position = (d % 4) * 64 + (h % 4) * 16 + (w % 4) * 4 + t % 4
    assert torch.equal(out[0, d, h, w, t], model.window_mask_token[position])


def test_loss_counts_masked_tokens_only_and_can_skip_background():
    model = small_storm()
    x = torch.randn(1, 1, 32, 32, 32, 8)
    mask = model.make_mask(1, 8, generator=torch.Generator().manual_seed(2))
    target = model.encoder.patch_embed.patchify(x)
    perfect_where_masked = torch.where(mask[..., None], target, torch.zeros_like(target))
    assert model.loss(x, perfect_where_masked, mask) == 0
    background = torch.zeros_like(x, dtype=torch.bool)
    background[:, :, :16] = True  # half the volume is background, filled with the clip's minimum
    x_with_background = torch.where(background, -3.0, x.clamp(min=-2.5))
    wrong_background = model.encoder.patch_embed.patchify(torch.where(background, 0.0, x_with_background))
    assert model.loss(x_with_background, wrong_background, mask) > 0
    brain_only = small_storm(loss_on_background=False)
    assert brain_only.loss(x_with_background, wrong_background, mask) == 0


def test_tiny_storm_overfits_one_clip():
    torch.manual_seed(0)
    model = small_storm()
    x = smooth_clip()
    mask = model.make_mask(1, 8, generator=torch.Generator().manual_seed(0))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(200):
        out = model(x, mask=mask)
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        losses.append(out.loss.item())
        if losses[-1] < 0.1 * losses[0]:
            break
    assert losses[-1] < 0.1 * losses[0], f"loss went from {losses[0]:.4f} to {losses[-1]:.4f} in 200 steps"
    assert out.prediction.shape == x.shape


def test_strd_neighbourhoods_have_the_right_geometry():
    spatial, temporal = neighbourhoods((4, 4, 4, 4))
    index = {(d, h, w, t): ((d * 4 + h) * 4 + w) * 4 + t for d in range(4) for h in range(4) for w in range(4)
             for t in range(4)}
    corner, inner = index[(0, 0, 0, 0)], index[(1, 1, 1, 1)]
    assert spatial[corner].sum() == 3**3 - 1 and spatial[inner].sum() == 4**3 - 1
    assert temporal[corner].sum() == 2 and temporal[inner].sum() == 3
    assert not spatial.diagonal().any() and not temporal.diagonal().any()
    assert spatial[corner, index[(2, 2, 2, 0)]] and not spatial[corner, index[(3, 0, 0, 0)]]
    assert not spatial[corner, index[(1, 0, 0, 1)]] and temporal[corner, index[(0, 0, 0, 2)]]


def test_strd_scores_are_probabilities_and_drop_whole_tokens_in_training_only():
    h = torch.randn(6, 256, 16)
    score = redundancy(h, (4, 4, 4, 4))
    assert score.shape == (6, 256) and score.min() >= 0 and score.max() <= 1
    copies = h.clone()
    copies[:, 1] = copies[:, 0] * 10  # token 1 a scaled copy of its temporal neighbour 0
    assert redundancy(copies, (4, 4, 4, 4))[:, 0].min() > 0.9
    dropped = strd(copies, (4, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    zero_rows = (dropped == 0).all(-1)
    assert zero_rows.any() and torch.equal(dropped[~zero_rows], copies[~zero_rows])
    model = build_model("neurostorm-mae-tiny", **SMALL)  # STRD on, as pretraining uses it
    assert all(b.use_strd for s in model.encoder.layers for b in s.blocks)
    model.eval()
    x = torch.randn(1, 1, 32, 32, 32, 8)
    mask = model.make_mask(1, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x, mask=mask).loss, model(x, mask=mask).loss)  # no dropout in eval mode


def test_voxel_zscore_pretraining_reconstructs_the_standardised_clip():
    """With ``voxel_zscore`` the target is the z-scored clip: the loss ignores a voxel's static intensity and
    scale, and ``loss_on_background=False`` still finds the background (0 once z-scored)."""
    model = small_storm(voxel_zscore=True)
    x = torch.randn(1, 1, 32, 32, 32, 8)
    x[:, :, :16] = -3.0  # half the volume is background
    mask = model.make_mask(1, 8, generator=torch.Generator().manual_seed(2))
    anatomy, gain = 4.0 * torch.rand(1, 1, 32, 32, 32, 1), 0.5 + torch.rand(1, 1, 32, 32, 32, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask=mask).loss, model(x * gain + anatomy, mask=mask).loss,
                                   rtol=1e-4, atol=1e-5)
    target = model.encoder.patch_embed.patchify(model.encoder.standardise(x))
    wrong_background = torch.where(model.encoder.patch_embed.patchify(x == -3.0), 1.0, target)
    assert model.loss(model.encoder.standardise(x), wrong_background, mask) > 0
    brain_only = small_storm(voxel_zscore=True, loss_on_background=False)
    assert brain_only.loss(brain_only.encoder.standardise(x), wrong_background, mask) == 0
