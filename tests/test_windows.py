"""Window geometry of the 4D token grid: partition, shifts, clamping, merging."""

import torch

from neurostorm.models import NeuroSTORMConfig
from neurostorm.models.windows import (
    PatchEmbed,
    PatchExpanding,
    PatchMerging,
    WindowLayout,
    grid_to_windows,
    roll_grid,
    window_partition,
    window_reverse,
    windows_to_grid,
)


def coordinate_grid(d, h, w, t):
    """(1, D, H, W, T, 4) tensor whose channels are each token's own (d, h, w, t) index."""
    axes = torch.meshgrid(*(torch.arange(n) for n in (d, h, w, t)), indexing="ij")
    return torch.stack(axes, dim=-1)[None].float()


def test_partition_then_reverse_is_identity():
    x = torch.randn(2, 8, 4, 8, 12, 3)
    windows = window_partition(x, (4, 4, 4, 4))
    assert windows.shape == (2 * 2 * 1 * 2 * 3, 256, 3)
    assert torch.equal(window_reverse(windows, (4, 4, 4, 4), (8, 4, 8, 12)), x)


def test_window_is_flattened_time_fastest_then_w_h_d():
    windows = window_partition(coordinate_grid(4, 4, 4, 8), (4, 4, 4, 4))  # 2 windows, along time
    first = windows[0]
    assert first[:5].tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 1, 0]]
    assert first[16].tolist() == [0, 1, 0, 0] and first[64].tolist() == [1, 0, 0, 0]
    assert windows[1][0].tolist() == [0, 0, 0, 4]


def test_shift_round_trip_and_wrap_around():
    x = coordinate_grid(8, 8, 8, 8)
    shifted = roll_grid(x, (2, 2, 2, 2))
    assert shifted[0, 0, 0, 0, 0].tolist() == [2, 2, 2, 2]
    assert shifted[0, -1, -1, -1, -1].tolist() == [1, 1, 1, 1]  # the near edge wraps to the far end
    assert torch.equal(roll_grid(shifted, (2, 2, 2, 2), reverse=True), x)
    assert roll_grid(x, (0, 0, 0, 0)) is x


def test_window_gather_equals_roll_then_partition_and_is_inverted_with_its_gradient():
    x = torch.randn(2, 8, 4, 8, 12, 3, dtype=torch.float64, requires_grad=True)
    for shifted in (False, True):
        layout = WindowLayout.for_grid((8, 4, 8, 12), (4, 4, 4, 4), shifted)
        windows = grid_to_windows(x, layout)
        assert torch.equal(windows, window_partition(roll_grid(x, layout.shift), layout.window))
        assert torch.equal(windows_to_grid(windows, layout), x)
        weights = torch.randn_like(windows)
        (grad,) = torch.autograd.grad((windows * weights).sum(), x)
        expected = roll_grid(window_reverse(weights, layout.window, layout.grid), layout.shift, reverse=True)
        assert torch.equal(grad, expected)
    # the numerical Jacobian of the inverse, on a grid small enough for one forward per element
    small = WindowLayout.for_grid((4, 4, 4, 4), (2, 2, 2, 2), shifted=True)
    tiny_windows = grid_to_windows(torch.randn(1, 4, 4, 4, 4, 2, dtype=torch.float64), small)
    assert torch.autograd.gradcheck(lambda t: windows_to_grid(t, small) * 2, (tiny_windows.requires_grad_(),))


def test_base_model_window_layouts_match_the_paper():
    config = NeuroSTORMConfig()
    grids = config.stage_grids()
    assert grids == [(16, 16, 16, 20), (8, 8, 8, 20), (4, 4, 4, 20), (2, 2, 2, 20)]
    layouts = [WindowLayout.for_grid(g, config.window, shifted=True) for g in grids[:3]]
    assert [lay.n_windows for lay in layouts] == [320, 40, 5]
    assert [lay.shift for lay in layouts] == [(2, 2, 2, 2), (2, 2, 2, 2), (0, 0, 0, 2)]
    last = WindowLayout.for_grid(grids[3], (2, 2, 2, 4), shifted=False)
    assert (last.n_windows, last.tokens_per_window, last.shift) == (5, 32, (0, 0, 0, 0))
    clamped = WindowLayout.for_grid((2, 2, 2, 20), (4, 4, 4, 4), shifted=True)
    assert clamped.window == (2, 2, 2, 4) and clamped.shift == (0, 0, 0, 2)


def test_patch_merging_joins_2x2x2_spatial_neighbours_and_keeps_time():
    merge = PatchMerging(4)
    grid = torch.randn(1, 4, 4, 4, 6, 4)
    bumped = grid.clone()
    bumped[0, 3, 2, 1, 5] += 1.0  # one token of the block (1, 1, 0) at frame 5
    changed = (merge(bumped) - merge(grid)).abs().sum(-1) > 0  # (1, 2, 2, 2, 6)
    assert changed.sum() == 1 and changed[0, 1, 1, 0, 5]
    assert merge(grid).shape == (1, 2, 2, 2, 6, 8)
    assert PatchExpanding(8)(merge(grid)).shape == (1, 4, 4, 4, 6, 4)


def test_patch_embedding_flattens_each_patch_and_keeps_frames():
    embed = PatchEmbed((2, 2, 2, 1), embed_dim=5)
    x = torch.arange(4 * 4 * 4 * 3, dtype=torch.float32).reshape(1, 1, 4, 4, 4, 3)
    patches = embed.patchify(x)
    assert patches.shape == (1, 2, 2, 2, 3, 8)
    assert patches[0, 0, 0, 1, 2].tolist() == [x[0, 0, i, j, 2 + k, 2].item() for i in (0, 1) for j in (0, 1)
                                               for k in (0, 1)]
    assert embed(x).shape == (1, 2, 2, 2, 3, 5)
