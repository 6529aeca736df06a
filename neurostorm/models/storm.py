"""STORM: masked spatiotemporal modelling to pretrain the NeuroSTORM encoder (SimMIM style).

Patch-embedded tokens at masked positions are replaced by learned mask tokens (one per position inside
a 4×4×4×4 window: a (256, C) table), the full grid goes through the encoder (positional tables are added
after masking), and a light decoder — the encoder in reverse, without skips or positional tables — maps
the last-stage tokens back to voxels. The loss is the mean squared error over the voxels of masked
tokens only, against the clip the encoder reads (each voxel z-scored over the clip when the encoder's
``voxel_zscore`` is on).

Mask modes: ``window`` (whole windows, the default, ratio 0.5), ``random`` (single tokens) and ``tube``
(a spatial position masked in every frame). Masks are drawn on the model's device from an optional
``torch.Generator``, so a seeded generator gives the same masks on every run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal, NamedTuple

import torch
from einops import rearrange, repeat
from torch import nn

from neurostorm.models.encoder import NeuroSTORM, NeuroSTORMConfig, Stage, stage_blocks
from neurostorm.models.windows import PatchExpanding, WindowLayout

MaskMode = Literal["window", "random", "tube"]


@dataclass
class STORMConfig:
    """The pretraining model: an encoder configuration plus masking and decoder settings."""

    encoder: NeuroSTORMConfig = field(default_factory=NeuroSTORMConfig)
    mask_mode: MaskMode = "window"
    mask_ratio: float = 0.5
    decoder_depths: tuple[int, ...] | None = None  # blocks per decoder stage; default: encoder's, reversed
    loss_on_background: bool = True  # False: voxels constant over the clip (the background fill) carry no loss

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = NeuroSTORMConfig.from_dict(self.encoder)
        if self.decoder_depths is None:
            self.decoder_depths = tuple(reversed(self.encoder.depths[:-1]))
        self.decoder_depths = tuple(int(d) for d in self.decoder_depths)
        if len(self.decoder_depths) != len(self.encoder.depths) - 1:
            raise ValueError(f"decoder_depths needs {len(self.encoder.depths) - 1} entries")
        if self.mask_mode not in ("window", "random", "tube"):
            raise ValueError(f"mask_mode must be window, random or tube, got {self.mask_mode!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> STORMConfig:
        """A saved configuration; a key of the encoder's configuration given at the top level (an override
        such as ``backend`` or ``voxel_zscore``) goes to the encoder, an unknown key is a ValueError."""
        own = {f.name for f in fields(cls)} - {"encoder"}
        encoder = {**values.get("encoder", {}), **{k: v for k, v in values.items() if k not in own | {"encoder"}}}
        return cls(encoder=NeuroSTORMConfig.from_dict(encoder), **{k: v for k, v in values.items() if k in own})


class STORMOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    prediction: torch.Tensor  # (B, 1, X, Y, Z, T) reconstructed clip
    mask: torch.Tensor  # (B, D, H, W, T) bool, True where the token was masked


class STORMDecoder(nn.Module):
    """Last-stage tokens (B, d, h, w, T, C_last) → voxels per first-stage token (B, D, H, W, T, patch voxels)."""

    def __init__(self, config: STORMConfig) -> None:
        super().__init__()
        enc = config.encoder
        dims = enc.stage_dims()
        self.first_patch_expanding = PatchExpanding(dims[-1])
        self.layers_up = nn.ModuleList()
        for depth, i in zip(config.decoder_depths, reversed(range(len(dims) - 1)), strict=True):
            blocks = stage_blocks(dims[i], depth, enc.window, enc)
            self.layers_up.append(Stage(blocks, PatchExpanding(dims[i]) if i > 0 else None, enc.checkpoint_blocks,
                                        resample_name="upsample"))
        self.norm_up = nn.LayerNorm(dims[0])
        patch_voxels = enc.patch_size[0] * enc.patch_size[1] * enc.patch_size[2] * enc.in_chans
        self.decoder_pred = nn.Linear(dims[0], patch_voxels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.first_patch_expanding(tokens)
        for stage in self.layers_up:
            x = stage(x)
        return self.decoder_pred(self.norm_up(x))


class STORM(nn.Module):
    """Masked-modelling pretraining model: ``forward(x)`` → :class:`STORMOutput` for x (B, 1, X, Y, Z, T)."""

    def __init__(self, config: STORMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or STORMConfig()
        self.encoder = NeuroSTORM(config.encoder)
        window_tokens = WindowLayout.for_grid(config.encoder.stage_grids()[0], config.encoder.window, False)
        self.window_mask_token = nn.Parameter(torch.zeros(window_tokens.tokens_per_window, config.encoder.embed_dim))
        nn.init.trunc_normal_(self.window_mask_token, std=0.02)
        self.decoder = STORMDecoder(config)

    def mask_layout(self, frames: int) -> WindowLayout:
        return WindowLayout.for_grid(self.config.encoder.stage_grids(frames)[0], self.config.encoder.window, False)

    def make_mask(self, batch: int, frames: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
        """A random (B, D, H, W, T) boolean token mask with ``mask_ratio`` of the units masked per sample."""
        layout = self.mask_layout(frames)
        d, h, w, t = layout.grid
        units = {"window": layout.n_windows, "random": d * h * w * t, "tube": d * h * w}[self.config.mask_mode]
        device = device or self.window_mask_token.device
        order = torch.rand(batch, units, generator=generator, device=device).argsort(dim=1)
        masked = order < int(units * self.config.mask_ratio)  # (B, units): a random subset of fixed size
        if self.config.mask_mode == "random":
            return rearrange(masked, "b (d h w t) -> b d h w t", d=d, h=h, w=w)
        if self.config.mask_mode == "tube":
            return repeat(masked, "b (d h w) -> b d h w t", d=d, h=h, t=t)
        wd, wh, ww, wt = layout.window
        return repeat(masked, "b (nd nh nw nt) -> b (nd wd) (nh wh) (nw ww) (nt wt)",
                      nd=d // wd, nh=h // wh, nw=w // ww, wd=wd, wh=wh, ww=ww, wt=wt)

    def apply_mask(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Replace masked tokens of (B, D, H, W, T, C) by the mask token of their position in the window."""
        layout = self.mask_layout(tokens.shape[4])
        (wd, wh, ww, wt), (d, h, w, t) = layout.window, layout.grid
        table = repeat(self.window_mask_token, "(wd wh ww wt) c -> (nd wd) (nh wh) (nw ww) (nt wt) c",
                       wd=wd, wh=wh, ww=ww, wt=wt, nd=d // wd, nh=h // wh, nw=w // ww, nt=t // wt)
        return torch.where(mask[..., None], table.to(tokens.dtype), tokens)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W, T, pd·ph·pw·c) → (B, c, X, Y, Z, T)."""
        pd, ph, pw = self.config.encoder.patch_size
        return rearrange(patches, "b d h w t (pd ph pw c) -> b c (d pd) (h ph) (w pw) t", pd=pd, ph=ph, pw=pw)

    def loss(self, x: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the voxels of masked tokens (optionally brain voxels only)."""
        target = self.encoder.patch_embed.patchify(x)  # (B, D, H, W, T, P)
        weight = mask[..., None].to(patches.dtype)  # (B, D, H, W, T, 1)
        if not self.config.loss_on_background:
            # the background holds one constant fill in every frame (0 once z-scored over the clip)
            background = (x == x[..., :1]).all(dim=5, keepdim=True)
            weight = weight * self.encoder.patch_embed.patchify((~background).to(patches.dtype))
        squared = (patches - target) ** 2 * weight
        return squared.sum() / (weight.expand_as(squared).sum()).clamp(min=1.0)

    @torch.no_grad()
    def start_at_intensity(self, value: float) -> None:
        """Set the decoder's output bias to the data's mean intensity ``value``. At zero, Adam would move it
        by about one learning rate per step and the first hundreds of steps would learn only the offset
        (the background of normalised clips sits several units below zero)."""
        self.decoder.decoder_pred.bias.fill_(value)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> STORMOutput:
        x = self.encoder.standardise(x)  # the target is the clip the encoder reads
        tokens = self.encoder.patch_embed(x)  # (B, D, H, W, T, C)
        if mask is None:
            mask = self.make_mask(x.shape[0], x.shape[5], generator=generator, device=x.device)
        latent = self.encoder.forward_tokens(self.apply_mask(tokens, mask))
        patches = self.decoder(latent)  # (B, D, H, W, T, P)
        return STORMOutput(self.loss(x, patches, mask), self.unpatchify(patches), mask)
