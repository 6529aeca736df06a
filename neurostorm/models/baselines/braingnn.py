"""BrainGNN (Li et al., 2021): ROI-aware graph convolutions with top-k ROI pooling, in plain PyTorch.

Graph: nodes are ROIs, node features their row of the connectivity matrix, edges the strongest
``edge_density`` share of positive connections, each row normalised to sum 1. Every graph has the same R
nodes, so the graphs of a batch are dense (B, n, n) tensors — no graph library needed.

Ra-GConv: the kernel of node i mixes K basis kernels by weights that depend on which ROI it is:
α_i = ReLU(θ₂ ReLU(θ₁ onehot(roi_i))) ∈ R^K, W_i = Σ_k α_ik W_k, and h_i ← W_i (h_i + Σ_j e_ij h_j) + b.
R-pool keeps the top ``pool_ratio`` of nodes by the score s = H w / ‖w‖ and gates them by sigmoid(s); a
node keeps its ROI identity. Readout per layer: mean and max over the kept nodes, concatenated over
layers, then an MLP. (The paper's extra regularisers — unit, top-k and group consistency losses — are
not included.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class BrainGNNConfig:
    n_rois: int = 264
    dim: int = 32  # node features after each graph convolution
    layers: int = 2
    communities: int = 8  # K basis kernels
    pool_ratio: float = 0.5
    edge_density: float = 0.1
    hidden: int = 64  # embedding size the task head reads
    dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def sparse_graph(fc: torch.Tensor, density: float) -> torch.Tensor:
    """(B, R, R) connectivity → (B, R, R) row-normalised adjacency of its strongest positive edges."""
    weights = fc.clamp(min=0) * (1 - torch.eye(fc.shape[1], device=fc.device, dtype=fc.dtype))
    threshold = torch.quantile(weights.flatten(1), 1 - density, dim=1)[:, None, None]
    adjacency = torch.where(weights >= threshold, weights, torch.zeros_like(weights))
    return adjacency / adjacency.sum(dim=2, keepdim=True).clamp(min=1e-6)


class RoiAwareConv(nn.Module):
    """(B, n, d_in) features, (B, n, n) adjacency, (B, n) ROI indices → (B, n, d_out)."""

    def __init__(self, d_in: int, d_out: int, n_rois: int, communities: int) -> None:
        super().__init__()
        self.membership = nn.Sequential(nn.Embedding(n_rois, communities), nn.ReLU(),
                                        nn.Linear(communities, communities), nn.ReLU())  # θ₁ onehot, θ₂
        self.basis = nn.Parameter(torch.empty(communities, d_in, d_out))
        nn.init.xavier_uniform_(self.basis.view(-1, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        alpha = self.membership(rois)  # (B, n, K)
        aggregated = h + adjacency @ h  # (B, n, d_in)
        per_basis = torch.einsum("bnd,kde->bnke", aggregated, self.basis)  # (B, n, K, d_out)
        return torch.einsum("bnke,bnk->bne", per_basis, alpha) + self.bias


class TopKPool(nn.Module):
    """Keep the ``ratio`` best-scoring nodes, gated by sigmoid(score)."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.w = nn.Parameter(torch.randn(dim) / dim**0.5)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor, rois: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        score = h @ self.w / self.w.norm()  # (B, n)
        keep = score.topk(max(1, int(round(self.ratio * h.shape[1]))), dim=1).indices  # (B, k)
        h = torch.gather(h, 1, keep[..., None].expand(-1, -1, h.shape[2])) * torch.sigmoid(
            torch.gather(score, 1, keep))[..., None]
        adjacency = torch.gather(adjacency, 1, keep[..., None].expand(-1, -1, adjacency.shape[2]))
        adjacency = torch.gather(adjacency, 2, keep[:, None, :].expand(-1, keep.shape[1], -1))  # (B, k, k)
        return h, adjacency, torch.gather(rois, 1, keep)


class BrainGNN(nn.Module):
    """``encode(fc)``: (B, R, R) connectivity → (B, hidden) features."""

    def __init__(self, config: BrainGNNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BrainGNNConfig()
        dims = [c.n_rois] + [c.dim] * c.layers
        self.convs = nn.ModuleList(RoiAwareConv(a, b, c.n_rois, c.communities) for a, b in zip(dims[:-1], dims[1:],
                                                                                                strict=True))
        self.pools = nn.ModuleList(TopKPool(c.dim, c.pool_ratio) for _ in range(c.layers))
        self.mlp = nn.Sequential(nn.Linear(2 * c.dim * c.layers, c.hidden), nn.ReLU(), nn.Dropout(c.dropout))

    @property
    def out_dim(self) -> int:
        return self.config.hidden

    def encode(self, fc: torch.Tensor) -> torch.Tensor:
        adjacency = sparse_graph(fc, self.config.edge_density)
        rois = torch.arange(fc.shape[1], device=fc.device).expand(fc.shape[0], -1)  # (B, R)
        h, readouts = fc, []
        for conv, pool in zip(self.convs, self.pools, strict=True):
            h = torch.relu(conv(h, adjacency, rois))
            h, adjacency, rois = pool(h, adjacency, rois)
            readouts += [h.mean(dim=1), h.amax(dim=1)]  # (B, dim) each
        return self.mlp(torch.cat(readouts, dim=1))
