"""The NeuroSTORM encoder: a 4D hierarchy of windowed Mamba blocks with shifted scanning.

Input (B, 1, X, Y, Z, T) → patch embedding (6×6×6×1 → 36 channels, token grid 16³×T at 96³) → four stages
of widths 36/72/144/288 and depths 2/2/6/2, each starting with its own positional tables, separated by
2×2×2 spatial patch merging (time is never merged) → (B, 2, 2, 2, T, 288), mean-pooled to (B, 288).

A block is pre-norm and residual: x += DropPath(Mixer(LN(x))); x += DropPath(MLP(LN(x))). The mixer
splits the token grid into 4×4×4×4 windows (256 tokens each, time fastest; the first stage has its own
``first_window``, 4⁴ as trained) and runs one Mamba layer over every window; odd blocks of a stage
roll the grid by half a window first (see ``windows.py`` for the scan order and the wrap-around). The
last stage uses windows that cover its whole space × 4 frames, never shifted. Module and parameter
names follow the reference implementation so that its checkpoints load by name (``weights.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from neurostorm.models.mamba import BACKENDS, Backend, Mamba
from neurostorm.models.strd import strd
from neurostorm.models.windows import (
    PatchEmbed,
    PatchMerging,
    PositionalEmbedding,
    Size4,
    WindowLayout,
    grid_to_windows,
    windows_to_grid,
)


@dataclass
class NeuroSTORMConfig:
    """Sizes of a NeuroSTORM encoder. The defaults are the released (trained) configuration."""

    img_size: tuple[int, int, int] = (96, 96, 96)  # voxels of the input volume (X, Y, Z)
    frames: int = 20  # length of the temporal tables: the longest clip the model accepts
    patch_size: tuple[int, int, int] = (6, 6, 6)  # voxels per token; the time patch is always 1 frame
    in_chans: int = 1
    embed_dim: int = 36  # width of the first stage; doubles at every merge
    depths: tuple[int, ...] = (2, 2, 6, 2)
    window: Size4 = (4, 4, 4, 4)  # tokens per window along (D, H, W, T), clamped to each stage's grid
    first_window: Size4 = (4, 4, 4, 4)  # the first stage's windows (the reference's argparse default is 2⁴)
    full_last_stage: bool = True  # last stage: windows span its whole space × window[3] frames, no shift
    mlp_ratio: float = 4.0
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    drop_path: float = 0.0  # stochastic depth, rising linearly to this rate over the blocks
    prompt_tokens: int = 0  # task-specific prompt tokens per block (0: none)
    strd: bool = False  # spatiotemporal redundancy dropout in every block (pretraining)
    checkpoint_blocks: bool = False  # recompute block activations in the backward pass (saves memory)
    backend: Backend = "auto"  # selective scan: auto | torch (CPU numba) | triton | cuda (mamba_ssm) | reference
    voxel_zscore: bool = False  # z-score each voxel over the clip's frames before embedding (the reference: off)

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "depths", "window", "first_window"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if any(i % p for i, p in zip(self.img_size, self.patch_size, strict=True)):
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if any((i // p) % 2 ** (len(self.depths) - 1) for i, p in zip(self.img_size, self.patch_size, strict=True)):
            raise ValueError(f"token grid {self.token_grid} cannot be halved {len(self.depths) - 1} times")

    @property
    def token_grid(self) -> tuple[int, int, int]:
        return tuple(i // p for i, p in zip(self.img_size, self.patch_size, strict=True))  # type: ignore[return-value]

    def stage_dims(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    def stage_grids(self, frames: int | None = None) -> list[Size4]:
        """Token grid (D, H, W, T) of every stage for clips of ``frames`` frames."""
        t = self.frames if frames is None else frames
        return [(*(g // 2**i for g in self.token_grid), t) for i in range(len(self.depths))]  # type: ignore[misc]

    @property
    def out_dim(self) -> int:
        return self.stage_dims()[-1]

    @property
    def frame_multiple(self) -> int:
        """Clip lengths must be multiples of this: every stage's window length in time."""
        return math.lcm(self.window[3], self.first_window[3])

    def stage_window(self, stage: int) -> Size4:
        """Window size of one stage: ``first_window``, then ``window``; a full last stage spans its space."""
        if self.full_last_stage and stage == len(self.depths) - 1:
            return (*self.stage_grids()[stage][:3], self.window[3])  # type: ignore[return-value]
        return self.first_window if stage == 0 else self.window

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NeuroSTORMConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown encoder settings: {sorted(unknown)}")
        return cls(**values)


def zscore_over_time(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, X, Y, Z, T) → each voxel's series minus its mean over the clip, divided by its standard deviation;
    a voxel constant over the clip (the background fill) becomes 0. Applying it twice changes nothing."""
    mean = x.mean(dim=5, keepdim=True)
    sd = x.std(dim=5, keepdim=True, correction=0)
    return torch.where(sd > eps, (x - mean) / sd.clamp(min=eps), torch.zeros_like(x))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's residual branch with probability ``rate``, rescale the rest."""
    if rate == 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= rate
    return x * keep.to(x.dtype) / (1.0 - rate)


class MLP(nn.Module):
    """C → hidden → C with GELU (names as the reference's MLP block)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(nn.functional.gelu(self.linear1(x)))


class WindowBlock(nn.Module):
    """One pre-norm residual block whose mixer runs inside (shifted) windows: x += Mix(LN(x)); x += MLP(LN(x)).
    Subclasses build the mixer (registered under ``mixer_name``) and define :meth:`mix_windows`."""

    def __init__(self, dim: int, window: Size4, shifted: bool, config: NeuroSTORMConfig, mixer: nn.Module,
                 mixer_name: str, drop_rate: float = 0.0, prompt_tokens: int = 0, use_strd: bool = False) -> None:
        super().__init__()
        self.window, self.shifted, self.drop_rate, self.use_strd = window, shifted, drop_rate, use_strd
        self.norm1 = nn.LayerNorm(dim)
        setattr(self, mixer_name, mixer)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * config.mlp_ratio))
        self.prompt = nn.Parameter(torch.zeros(prompt_tokens, dim)) if prompt_tokens else None
        if self.prompt is not None:
            nn.init.trunc_normal_(self.prompt, std=0.02)

    def mix_windows(self, windows: torch.Tensor, layout: WindowLayout, n_prompts: int) -> torch.Tensor:
        """(B·nW, P + n, C) → (B·nW, P + n, C); the first ``n_prompts`` tokens of each window are prompts."""
        raise NotImplementedError

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The mixer over a (B, D, H, W, T, C) grid; prompts prepended to every window, outputs dropped."""
        layout = WindowLayout.for_grid(tuple(x.shape[1:5]), self.window, self.shifted)
        windows = grid_to_windows(x, layout)  # (B·nW, n, C)
        n_prompts = 0 if self.prompt is None else self.prompt.shape[0]
        if n_prompts:
            windows = torch.cat([self.prompt.expand(windows.shape[0], -1, -1).to(windows.dtype), windows], dim=1)
        out = self.mix_windows(windows, layout, n_prompts)[:, n_prompts:]  # (B·nW, n, C)
        if self.use_strd and self.training:
            out = strd(out, layout.window)
        return windows_to_grid(out, layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.mix(self.norm1(x)), self.drop_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_rate, self.training)


class MambaBlock(WindowBlock):
    """NeuroSTORM's block: one Mamba layer scans every window (time fastest)."""

    def __init__(self, dim: int, window: Size4, shifted: bool, config: NeuroSTORMConfig, drop_rate: float = 0.0,
                 prompt_tokens: int = 0, use_strd: bool = False) -> None:
        mamba = Mamba(dim, d_state=config.d_state, d_conv=config.d_conv, expand=config.expand, backend=config.backend)
        super().__init__(dim, window, shifted, config, mamba, "mamba", drop_rate, prompt_tokens, use_strd)

    def mix_windows(self, windows: torch.Tensor, layout: WindowLayout, n_prompts: int) -> torch.Tensor:
        return self.mamba(windows)


class Stage(nn.Module):
    """Blocks alternating plain and shifted windows, then an optional resampling (merge or expand)."""

    def __init__(self, blocks: list[MambaBlock], resample: nn.Module | None, checkpoint_blocks: bool,
                 resample_name: str = "downsample") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample_name = resample_name
        setattr(self, resample_name, resample)
        self.checkpoint_blocks = checkpoint_blocks

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks alone: (B, D, H, W, T, C) → the same shape."""
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(x)
        resample = getattr(self, self.resample_name)
        return x if resample is None else resample(x)


def stage_blocks(dim: int, depth: int, window: Size4, config: NeuroSTORMConfig, shift: bool = True,
                 drop_rates: list[float] | None = None, prompt_tokens: int = 0, use_strd: bool = False,
                 block_type: type[WindowBlock] = MambaBlock, **block_args) -> list[WindowBlock]:
    """``depth`` blocks of width ``dim``; odd ones shifted when ``shift``."""
    rates = drop_rates or [0.0] * depth
    return [block_type(dim, window, shift and i % 2 == 1, config, rates[i], prompt_tokens, use_strd, **block_args)
            for i in range(depth)]


class NeuroSTORM(nn.Module):
    """NeuroSTORM encoder. ``encode(x)``: (B, 1, X, Y, Z, T) → (B, out_dim) pooled embedding."""

    config_type: type[NeuroSTORMConfig] = NeuroSTORMConfig
    block_type: type[WindowBlock] = MambaBlock

    def block_args(self, stage: int) -> dict:
        """Extra arguments of the blocks of one stage (none for Mamba blocks)."""
        return {}

    def __init__(self, config: NeuroSTORMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or self.config_type()
        dims, grids = config.stage_dims(), config.stage_grids()
        rates = torch.linspace(0, config.drop_path, sum(config.depths)).tolist()
        self.patch_embed = PatchEmbed((*config.patch_size, 1), config.embed_dim, config.in_chans)
        self.pos_embeds = nn.ModuleList(PositionalEmbedding(d, g) for d, g in zip(dims, grids, strict=True))
        self.layers = nn.ModuleList()
        last = len(config.depths) - 1
        for i, (dim, depth) in enumerate(zip(dims, config.depths, strict=True)):
            full = config.full_last_stage and i == last
            blocks = stage_blocks(dim, depth, config.stage_window(i), config, shift=not full,
                                  drop_rates=rates[sum(config.depths[:i]):sum(config.depths[:i + 1])],
                                  prompt_tokens=config.prompt_tokens, use_strd=config.strd,
                                  block_type=self.block_type, **self.block_args(i))
            self.layers.append(Stage(blocks, PatchMerging(dim) if i < last else None, config.checkpoint_blocks))

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that says what is wrong with a clip batch of the wrong shape."""
        c = self.config
        expected = f"(B, {c.in_chans}, {', '.join(map(str, c.img_size))}, T)"
        if x.ndim != 6 or tuple(x.shape[1:5]) != (c.in_chans, *c.img_size):
            raise ValueError(f"input of shape {tuple(x.shape)}; the model expects {expected}")
        t, wt = x.shape[5], c.frame_multiple
        if t > c.frames or t % wt:
            raise ValueError(f"clip of {t} frames: the model takes up to {c.frames} frames in multiples of {wt}")

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """The clip the patch embedding reads: with ``voxel_zscore`` each voxel z-scored over the clip's frames
        (what is left is how it fluctuates, not the anatomy every clip shares); else the clip as stored."""
        self.check_input(x)
        return zscore_over_time(x) if self.config.voxel_zscore else x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z, T) → first-stage tokens (B, D, H, W, T, C) before positional tables."""
        return self.patch_embed(self.standardise(x))

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run every stage on embedded tokens: (B, D, H, W, T, C) → (B, d, h, w, T, out_dim)."""
        for pos_embed, stage in zip(self.pos_embeds, self.layers, strict=True):
            tokens = stage(pos_embed(tokens))
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z, T) → token grid (B, d, h, w, T, out_dim) of the last stage."""
        return self.forward_tokens(self.embed(x))

    def stage_tokens(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The tokens a stage's blocks give, before its merging: (B, 1, X, Y, Z, T) → (B, d, h, w, T, C) with
        the grid and width of ``stage`` (1-based; the last stage's are :meth:`forward`'s)."""
        if not 1 <= stage <= len(self.layers):
            widths = ", ".join(map(str, self.config.stage_dims()))
            raise ValueError(f"stage {stage}: the model has stages 1 to {len(self.layers)} (widths {widths})")
        tokens = self.embed(x)
        for pos_embed, layer in zip(self.pos_embeds[:stage - 1], self.layers[:stage - 1], strict=True):
            tokens = layer(pos_embed(tokens))
        return self.layers[stage - 1].mix(self.pos_embeds[stage - 1](tokens))

    def encode(self, x: torch.Tensor, return_tokens: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mean over all last-stage tokens: (B, 1, X, Y, Z, T) → (B, out_dim) [, token grid]."""
        tokens = self(x)
        pooled = tokens.mean(dim=(1, 2, 3, 4))
        return (pooled, tokens) if return_tokens else pooled

    def stage_parameter_counts(self) -> dict[str, int]:
        """Parameters per part: patch embedding, then each stage with its positional tables and merging."""
        counts = {"patch_embed": sum(p.numel() for p in self.patch_embed.parameters())}
        for i, (pos, stage) in enumerate(zip(self.pos_embeds, self.layers, strict=True)):
            counts[f"stage{i + 1}"] = sum(p.numel() for m in (pos, stage) for p in m.parameters())
        return counts


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["NeuroSTORM", "NeuroSTORMConfig", "MambaBlock", "WindowBlock", "Stage", "count_parameters", "stage_blocks"]
