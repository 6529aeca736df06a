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
