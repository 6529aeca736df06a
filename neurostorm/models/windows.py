"""4D token grids: patch embedding, positional tables, windows, shifts, merging and expansion.

Shared by every volume model of the package (NeuroSTORM and SwiFT differ only in the mixer that runs
inside a window). Token grids are channels-last: (B, D, H, W, T, C), D/H/W the three spatial axes of
the MNI grid in voxel order and T time.

Window order: a window of size (wd, wh, ww, wt) is flattened raster-wise with time fastest, then W,
H, D — the sequence a Mamba layer scans. Shifted windows roll the grid by −shift on every axis before
partitioning and by +shift after, so tokens at the far edge wrap around into windows with the near
edge; nothing masks them (a Mamba scan has no attention matrix to mask), as in the reference model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

Size4 = tuple[int, int, int, int]


@dataclass(frozen=True)
class WindowLayout:
    """Window and shift sizes of one stage, clamped to its token grid (D, H, W, T)."""

    grid: Size4
    window: Size4
    shift: Size4

    @classmethod
    def for_grid(cls, grid: Size4, window: Size4, shifted: bool) -> WindowLayout:
        """Windows no larger than the grid; no shift on an axis the window covers whole."""
        clamped = tuple(min(g, w) for g, w in zip(grid, window, strict=True))
        shift = tuple(w // 2 if shifted and g > w else 0 for g, w in zip(grid, clamped, strict=True))
        for g, w in zip(grid, clamped, strict=True):
            if g % w:
                raise ValueError(f"token grid {grid} is not divisible by window {clamped}")
        return cls(grid=grid, window=clamped, shift=shift)  # type: ignore[arg-type]

    @property
    def n_windows(self) -> int:
        return math.prod(self.grid) // math.prod(self.window)

    @property
    def tokens_per_window(self) -> int:
        return math.prod(self.window)


def window_partition(x: torch.Tensor, window: Size4) -> torch.Tensor:
    """(B, D, H, W, T, C) → (B·n_windows, tokens_per_window, C), windows flattened time-fastest."""
    wd, wh, ww, wt = window
    return rearrange(x, "b (nd wd) (nh wh) (nw ww) (nt wt) c -> (b nd nh nw nt) (wd wh ww wt) c",
                     wd=wd, wh=wh, ww=ww, wt=wt)


def window_reverse(windows: torch.Tensor, window: Size4, grid: Size4) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B·n_windows, tokens, C) → (B, D, H, W, T, C)."""
    (wd, wh, ww, wt), (d, h, w, t) = window, grid
    return rearrange(windows, "(b nd nh nw nt) (wd wh ww wt) c -> b (nd wd) (nh wh) (nw ww) (nt wt) c",
                     nd=d // wd, nh=h // wh, nw=w // ww, nt=t // wt, wd=wd, wh=wh, ww=ww, wt=wt)


def roll_grid(x: torch.Tensor, shift: Size4, reverse: bool = False) -> torch.Tensor:
    """Cyclic shift of a (B, D, H, W, T, C) grid by −shift (or +shift with ``reverse``)."""
    if not any(shift):
        return x
    sign = 1 if reverse else -1
    return torch.roll(x, shifts=tuple(sign * s for s in shift), dims=(1, 2, 3, 4))


@functools.lru_cache(maxsize=64)
def _token_orders(layout: WindowLayout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For one sample's flattened grid: the grid index of every window token (rolled and partitioned, in
    window order), and the inverse permutation."""
    grid_index = torch.arange(math.prod(layout.grid)).reshape(1, *layout.grid, 1)
    order = window_partition(roll_grid(grid_index, layout.shift), layout.window).reshape(-1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return order.to(device), inverse.to(device)


class _GatherTokens(torch.autograd.Function):
    """``tokens[:, order]`` for a permutation ``order``; the gradient is the gather by its ``inverse``."""

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.inverse = inverse
        return tokens.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad.index_select(1, ctx.inverse), None, None


def grid_to_windows(x: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """(B, D, H, W, T, C) → (B·n_windows, tokens_per_window, C): the roll by −shift and the window partition
    as one gather (the tokens of ``window_partition(roll_grid(x, shift), window)``, one copy instead of five)."""
    order, inverse = _token_orders(layout, x.device)
    tokens = _GatherTokens.apply(x.reshape(x.shape[0], -1, x.shape[-1]), order, inverse)  # (B, D·H·W·T, C)
    return tokens.reshape(-1, layout.tokens_per_window, x.shape[-1])


def windows_to_grid(windows: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """Inverse of :func:`grid_to_windows`: (B·n_windows, tokens_per_window, C) → (B, D, H, W, T, C)."""
    order, inverse = _token_orders(layout, windows.device)
    tokens = windows.reshape(-1, math.prod(layout.grid), windows.shape[-1])  # (B, D·H·W·T, C)
    return _GatherTokens.apply(tokens, inverse, order).reshape(-1, *layout.grid, windows.shape[-1])


class PatchEmbed(nn.Module):
    """Non-overlapping (pd, ph, pw, 1) patches of a (B, 1, X, Y, Z, T) clip → tokens (B, D, H, W, T, C).

    Each patch is flattened in (pd, ph, pw) raster order and projected by one linear layer (``fc``).
    """

    def __init__(self, patch: Size4, embed_dim: int, in_chans: int = 1) -> None:
        super().__init__()
        if patch[3] != 1:
            raise ValueError("the time patch size must be 1: time is never merged")
        self.patch = patch
        self.fc = nn.Linear(in_chans * patch[0] * patch[1] * patch[2], embed_dim)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c, X, Y, Z, T) → (B, D, H, W, T, pd·ph·pw·c) voxel values per patch."""
        pd, ph, pw, _ = self.patch
        return rearrange(x, "b c (d pd) (h ph) (w pw) t -> b d h w t (pd ph pw c)", pd=pd, ph=ph, pw=pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.patchify(x))


class PositionalEmbedding(nn.Module):
    """Learned absolute position: a spatial table (D, H, W, C) plus a temporal table (T, C).

    The temporal table is sliced to the clip length, so shorter clips reuse its first frames.
    """

    def __init__(self, dim: int, grid: Size4) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(*grid[:3], dim))
        self.time_embed = nn.Parameter(torch.zeros(grid[3], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.time_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[4]
        if frames > self.time_embed.shape[0]:
            raise ValueError(f"clip of {frames} frames is longer than the temporal table "
                             f"({self.time_embed.shape[0]} frames); build the model with frames >= {frames}")
        return x + self.pos_embed[:, :, :, None, :] + self.time_embed[:frames]


class PatchMerging(nn.Module):
    """Join 2×2×2 spatial neighbours: (B, D, H, W, T, C) → (B, D/2, H/2, W/2, T, 2C); time is kept."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b (d i) (h j) (w k) t c -> b d h w t (i j k c)", i=2, j=2, k=2)  # 8C channels
        return self.reduction(self.norm(x))


class PatchExpanding(nn.Module):
    """Decoder step: (B, D, H, W, T, C) → (B, 2D, 2H, 2W, T, C/2) by a linear map to 4C split over 2×2×2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.expand(x), "b d h w t (i j k c) -> b (d i) (h j) (w k) t c", i=2, j=2, k=2)
        return self.norm(x)
