"""Spatiotemporal redundancy dropout (STRD), a pretraining-only regulariser without parameters.

Inside one window of Mamba outputs h (tokens × C), a pseudo-attention Â = softmax(h hᵀ / √C) says how
much each token resembles every other. A token's redundancy is the largest attention it pays to one of
its neighbours — spatial neighbours Ω_s (same frame, Chebyshev distance ≤ ``spatial_radius``) or temporal
neighbours Ω_t (same voxel position, |Δt| ≤ ``temporal_radius``)::

    r_i = max( max_{j ∈ Ω_s(i)} Â_ij , max_{j ∈ Ω_t(i)} Â_ij )  ∈ [0, 1]

and the token is zeroed with probability r_i. A token that is nearly a copy of a neighbour (its softmax
mass concentrated on it) is therefore usually dropped and the encoder must rebuild it from context.
Our choices, documented because the reference differs: the two neighbourhoods are combined by a
maximum (the reference mixes the spatial and temporal normalisers of its Eq. 3), Â is computed without
gradient (the Bernoulli draw is not differentiable anyway), and kept tokens are not rescaled.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from neurostorm.models.windows import Size4


@lru_cache(maxsize=16)
def neighbourhoods(window: Size4, spatial_radius: int = 2, temporal_radius: int = 2) -> tuple[torch.Tensor, ...]:
    """Boolean (n, n) masks Ω_s and Ω_t for a window flattened time-fastest; a token is not its own neighbour."""
    axes = torch.meshgrid(*(torch.arange(s) for s in window), indexing="ij")
    coords = torch.stack([a.reshape(-1) for a in axes], dim=-1)  # (n, 4) in (d, h, w, t)
    diff = (coords[:, None, :] - coords[None, :, :]).abs()  # (n, n, 4)
    not_self = ~torch.eye(coords.shape[0], dtype=torch.bool)
    spatial = (diff[..., :3].amax(-1) <= spatial_radius) & (diff[..., 3] == 0) & not_self
    temporal = (diff[..., :3].amax(-1) == 0) & (diff[..., 3] <= temporal_radius) & not_self
    return spatial, temporal


def redundancy(h: torch.Tensor, window: Size4) -> torch.Tensor:
    """Redundancy score r of every token: (windows, n, C) → (windows, n) in [0, 1]."""
    spatial, temporal = (m.to(h.device) for m in neighbourhoods(window))
    with torch.no_grad():
        attention = torch.softmax(h @ h.transpose(-2, -1) * h.shape[-1] ** -0.5, dim=-1)  # (windows, n, n)
        neighbours = spatial | temporal
        return attention.masked_fill(~neighbours, 0.0).amax(dim=-1).clamp(0.0, 1.0)


def strd(h: torch.Tensor, window: Size4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each token of (windows, n, C) with its redundancy probability; call in training mode only."""
    keep = torch.bernoulli(1.0 - redundancy(h, window), generator=generator)  # (windows, n)
    return h * keep.unsqueeze(-1).to(h.dtype)
