"""SwiFT (Kim et al., 2023): the 4D Swin transformer for fMRI, on the same grid code as NeuroSTORM.

Patch embedding, positional tables, (shifted) 4D windows, patch merging and pooling are the encoder's
(``encoder.py``, ``windows.py``); only the mixer differs: multi-head self-attention inside each window of
4×4×4×4 tokens. In shifted blocks the grid is rolled by half a window, so a window at the far edge holds
tokens from opposite ends of the brain; as in Swin, attention between tokens of different regions is
masked. Prompt tokens, when present, attend and are attended everywhere. The Mamba settings of the
configuration (d_state, d_conv, expand, backend) are not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from neurostorm.models.encoder import NeuroSTORM, NeuroSTORMConfig, WindowBlock
from neurostorm.models.windows import Size4, WindowLayout, window_partition


@dataclass
class SwiFTConfig(NeuroSTORMConfig):
    heads: tuple[int, ...] = (3, 6, 12, 24)  # attention heads per stage

    def __post_init__(self) -> None:
        super().__post_init__()
        self.heads = tuple(int(h) for h in self.heads)
        if len(self.heads) != len(self.depths):
            raise ValueError(f"heads {self.heads} needs one entry per stage ({len(self.depths)})")
        for dim, heads in zip(self.stage_dims(), self.heads, strict=True):
            if dim % heads:
                raise ValueError(f"stage width {dim} is not divisible by {heads} heads")


def shifted_window_mask(layout: WindowLayout) -> torch.Tensor:
    """(n_windows, n, n) bool, True where two tokens of a window came from the same region of the rolled grid."""
    region = torch.zeros(layout.grid, dtype=torch.long)
    for axis, (size, shift) in enumerate(zip(layout.window, layout.shift, strict=True)):
        if not shift:
            continue
        label = torch.zeros(layout.grid[axis], dtype=torch.long)
        label[-size:-shift], label[-shift:] = 1, 2
        region = region * 3 + label.view([-1 if a == axis else 1 for a in range(4)])
    windows = window_partition(region[None, ..., None], layout.window)[..., 0]  # (nW, n)
    return windows[:, :, None] == windows[:, None, :]


class WindowAttention(nn.Module):
    """Multi-head self-attention over the tokens of each window: (N, n, C) → (N, n, C)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "n t (three h d) -> three n h t d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # allowed: (N, 1, t, t) bool
        return self.proj(rearrange(out, "n h t d -> n t (h d)"))


class SwinBlock(WindowBlock):
    def __init__(self, dim: int, window: Size4, shifted: bool, config: NeuroSTORMConfig, drop_rate: float = 0.0,
                 prompt_tokens: int = 0, use_strd: bool = False, heads: int = 1) -> None:
        super().__init__(dim, window, shifted, config, WindowAttention(dim, heads), "attn", drop_rate, prompt_tokens,
                         use_strd)

    def mix_windows(self, windows: torch.Tensor, layout: WindowLayout, n_prompts: int) -> torch.Tensor:
        if not any(layout.shift):
            return self.attn(windows)
        allowed = F.pad(shifted_window_mask(layout).to(windows.device), (n_prompts, 0, n_prompts, 0), value=True)
        batch = windows.shape[0] // layout.n_windows  # windows are ordered batch-major
        return self.attn(windows, allowed.repeat(batch, 1, 1)[:, None])


class SwiFT(NeuroSTORM):
    """SwiFT encoder: ``encode(x)`` (B, 1, X, Y, Z, T) → (B, out_dim), as NeuroSTORM."""

    config_type = SwiFTConfig
    block_type = SwinBlock

    def block_args(self, stage: int) -> dict:
        return {"heads": self.config.heads[stage]}
