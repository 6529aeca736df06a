"""Clip augmentations for pretraining: random affine, Gaussian noise, light smoothing.

Each draw is made once per sample and applied to all its frames, so a clip stays one coherent brain in
time. Operates on batches (B, 1, X, Y, Z, T) on any device, seeded by an optional ``torch.Generator``.
Rotations are taken in the grid's normalised coordinates, which are isotropic for the cubic 96³ grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange


@dataclass
class AugmentConfig:
    rotate_deg: float = 10.0  # each of three rotation angles ~ U(−rotate_deg, +rotate_deg)
    scale: float = 0.1  # isotropic zoom ~ U(1 − scale, 1 + scale)
    noise_p: float = 0.3  # probability of adding N(0, noise_std²) to every voxel
    noise_std: float = 0.1
    smooth_p: float = 0.2  # probability of a Gaussian blur with σ ~ U(smooth_sigma) voxels
    smooth_sigma: tuple[float, float] = (0.5, 1.0)


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians about the three axes → (B, 3, 3) rotations R = Rz·Ry·Rx."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def rot(c, s, axis):
        rows = {0: [[one, zero, zero], [zero, c, -s], [zero, s, c]],
                1: [[c, zero, s], [zero, one, zero], [-s, zero, c]],
                2: [[c, -s, zero], [s, c, zero], [zero, zero, one]]}[axis]
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    return rot(cos[:, 2], sin[:, 2], 2) @ rot(cos[:, 1], sin[:, 1], 1) @ rot(cos[:, 0], sin[:, 0], 0)


def random_affine(x: torch.Tensor, rotate_deg: float, scale: float, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Rotate and zoom every clip of (B, 1, X, Y, Z, T) about the grid centre, the same for all frames."""
    b = x.shape[0]
    angles = _uniform(3 * b, -math.radians(rotate_deg), math.radians(rotate_deg), x, generator).view(b, 3)
    zoom = _uniform(b, 1 - scale, 1 + scale, x, generator)
    # affine_grid maps output to input coordinates: the inverse zoom makes the brain appear larger for zoom > 1
    theta = torch.cat([rotation_matrices(angles) / zoom[:, None, None], torch.zeros(b, 3, 1, dtype=x.dtype,
                                                                                     device=x.device)], dim=2)
    frames = rearrange(x, "b 1 x y z t -> b t x y z")
    # grid_sample indexes (x, y, z) as (W, H, D) of its input: reverse the axes of our (X, Y, Z) volume
    flipped = frames.permute(0, 1, 4, 3, 2)
    grid = F.affine_grid(theta, list(flipped.shape), align_corners=False)
    moved = F.grid_sample(flipped, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return rearrange(moved.permute(0, 1, 4, 3, 2), "b t x y z -> b 1 x y z t")


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, X, Y, Z, T) with σ (B,) voxels per sample, frame by frame."""
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernels = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)  # (B, K)
    b, t = x.shape[0], x.shape[-1]
    volumes = rearrange(x, "b 1 x y z t -> 1 (b t) x y z")  # one channel per clip frame, convolved per channel
    weights = kernels.repeat_interleave(t, dim=0)  # (B·T, K)
    for axis in range(3):
        shape = [b * t, 1, 1, 1, 1]
        shape[2 + axis] = weights.shape[1]
        volumes = F.conv3d(F.pad(volumes, _pad_for(axis, radius), mode="replicate"), weights.view(shape),
                           groups=b * t)
    return rearrange(volumes, "1 (b t) x y z -> b 1 x y z t", b=b)


def _pad_for(axis: int, radius: int) -> tuple[int, ...]:
    pads = [0] * 6  # F.pad order: last axis first
    pads[2 * (2 - axis)] = pads[2 * (2 - axis) + 1] = radius
    return tuple(pads)


def augment(x: torch.Tensor, config: AugmentConfig | None = None, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """All augmentations of ``config`` on a batch (B, 1, X, Y, Z, T); one draw per sample for all frames."""
    config = config or AugmentConfig()
    b = x.shape[0]
    if config.rotate_deg or config.scale:
        x = random_affine(x, config.rotate_deg, config.scale, generator)
    if config.smooth_p:
        chosen = torch.rand(b, generator=generator, device=x.device) < config.smooth_p
        if chosen.any():
            sigma = _uniform(b, *config.smooth_sigma, x, generator)
            x = torch.where(chosen.view(b, 1, 1, 1, 1, 1), gaussian_blur(x, sigma), x)
    if config.noise_p:
        chosen = torch.rand(b, generator=generator, device=x.device) < config.noise_p
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * config.noise_std
        x = x + noise * chosen.view(b, 1, 1, 1, 1, 1).to(x.dtype)
    return x
