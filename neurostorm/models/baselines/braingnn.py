"""BrainGNN (Li et al., 2021): ROI-aware graph convolutions, top-k ROI pooling and their regularisers.

Graph of a run: nodes are ROIs with their FC row as features (R values); an edge joins every pair with a
non-zero correlation, weighted by |FC_ij|. All graphs have the same R nodes, so a batch is dense tensors and
no graph library is needed (pooling keeps k nodes of each graph, the same k for all).

Ra-GConv, node i's new features: the mean over its incoming edges and a self-loop (weight 1) of

    softmax_j(e_ij) · W_j x_j,        W_j = reshape(θ₂ ReLU(θ₁ onehot(roi_j)))  (d_in × d_out)

plus a bias: each neighbour j is transformed by the kernel of its own ROI, built from K community kernels
(θ₁: R → K, no bias; θ₂: K → d_in·d_out). No non-linearity follows the convolution.
R-pool: scores s = X w / ‖w‖, the ⌈ratio·n⌉ best nodes kept (keeping their ROI identity) and scaled by
sigmoid(s); the edges among them stay and are the second block's graph, as in the reference code
(``two_hop=True`` instead joins the kept nodes by paths of one or two edges, (A + I)² without its diagonal,
the augmentation of the original BrainGNN code). Readout per block: [max, mean] over the kept
nodes; both blocks concatenated; classifier MLP (256, 512) with ReLU, batch norm and dropout.

Regularisers of the paper, computed from the last forward (``regularisers(y)``):
unit loss Σ (‖w‖ − 1)² over both pooling vectors; top-k loss per block, −mean log σ(s) over the kept nodes
− mean log(1 − σ(s)) over the dropped ones (all n scores of the block); group-level consistency: for each
class, the mean squared distance between the first block's σ(s) (ROI order) of every pair of its
subjects. Weights: 1, 0.1, 0.1 (the paper's λ).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class BrainGNNConfig:
    n_rois: int = 264
    dims: tuple[int, int] = (32, 32)  # node features after each Ra-GConv
    communities: int = 8  # K community kernels
    pool_ratio: float = 0.5
    classifier: tuple[int, int] = (256, 512)  # MLP widths; the last is the embedding the task head reads
    dropout: float = 0.5
    unit_weight: float = 1.0
    topk_weight: float = 0.1
    consistency_weight: float = 0.1
    two_hop: bool = False  # the second block's graph: the pooled one (False) or its two-hop augmentation

    def __post_init__(self) -> None:
        self.dims = tuple(int(d) for d in self.dims)
        self.classifier = tuple(int(d) for d in self.classifier)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> BrainGNNConfig:
        """The configuration a pretrained folder records; folders saved before ``two_hop`` existed used it."""
        return cls(**{"two_hop": True, **saved})


def connectome_graph(fc: torch.Tensor) -> torch.Tensor:
    """(B, R, R) connectivity → (B, R, R) edge weights |FC_ij| off the diagonal (0 = no edge)."""
    return fc.abs() * (1 - torch.eye(fc.shape[1], device=fc.device, dtype=fc.dtype))


class RaGConv(nn.Module):
    """(B, n, d_in) features, (B, n, n) edge weights, (B, n) ROI indices → (B, n, d_out)."""

    def __init__(self, d_in: int, d_out: int, n_rois: int, communities: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.theta1 = nn.Linear(n_rois, communities, bias=False)
        self.theta2 = nn.Linear(communities, d_in * d_out)
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-1 / d_in, 1 / d_in))

    def kernels(self, rois: torch.Tensor) -> torch.Tensor:
        """(B, n) ROI indices → (B, n, d_in, d_out) kernels W_roi (θ₁ onehot(roi) is column roi of θ₁)."""
        communities = torch.relu(self.theta1.weight.T[rois])  # (B, n, K)
        return self.theta2(communities).view(*rois.shape, self.d_in, self.d_out)

    def forward(self, x: torch.Tensor, edges: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        messages = torch.einsum("bjd,bjde->bje", x, self.kernels(rois))  # W_j x_j, (B, n, d_out)
        n = x.shape[1]
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        present = (edges != 0) | eye  # incoming edges of i and its self-loop
        weights = torch.where(eye, torch.ones_like(edges), edges).masked_fill(~present, -torch.inf)
        weights = torch.softmax(weights, dim=2)  # over j, for each target i
        return (weights @ messages) / present.sum(dim=2, keepdim=True) + self.bias  # mean aggregation


class TopKPool(nn.Module):
    """Keep the ⌈ratio·n⌉ best-scoring nodes, scaled by sigmoid(score); returns the kept graph and all
    scores (B, n) of the block."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.weight = nn.Parameter(torch.empty(dim).uniform_(-1 / math.sqrt(dim), 1 / math.sqrt(dim)))

    def kept(self, n: int) -> int:
        return max(1, math.ceil(self.ratio * n))

    def forward(self, x: torch.Tensor, edges: torch.Tensor, rois: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        score = x @ self.weight / self.weight.norm()  # (B, n)
        keep = score.topk(self.kept(x.shape[1]), dim=1).indices  # (B, k)
        x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[2]))
        x = x * torch.sigmoid(torch.gather(score, 1, keep))[..., None]
        edges = torch.gather(edges, 1, keep[..., None].expand(-1, -1, edges.shape[2]))
        edges = torch.gather(edges, 2, keep[:, None, :].expand(-1, keep.shape[1], -1))  # (B, k, k)
        return x, edges, torch.gather(rois, 1, keep), score


def two_hop_graph(edges: torch.Tensor) -> torch.Tensor:
    """(B, n, n) edge weights → (A + I)² without the diagonal: paths of one or two edges."""
    eye = torch.eye(edges.shape[1], device=edges.device, dtype=edges.dtype)
    return ((edges + eye) @ (edges + eye)) * (1 - eye)


def topk_loss(score: torch.Tensor, kept: int) -> torch.Tensor:
    """−mean log σ(s) of the ``kept`` best nodes − mean log(1 − σ(s)) of the others; (B, n) scores."""
    s = torch.sigmoid(score).sort(dim=1, descending=True).values
    loss = -torch.log(s[:, :kept] + 1e-10).mean()
    return loss - torch.log(1 - s[:, kept:] + 1e-10).mean() if kept < s.shape[1] else loss


def consistency_loss(score: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ over classes of the mean over pairs (m, n) of one class of ‖σ(s_m) − σ(s_n)‖² / 2 (ROI-ordered s)."""
    s = torch.sigmoid(score)
    total = score.new_zeros(())
    for label in y.unique():
        group = s[y == label]  # (G, R)
        # trace(sᵀ L s) with L the Laplacian of the complete graph on the group = ½ Σ_{m,n} ‖s_m − s_n‖²
        total = total + (len(group) * group.square().sum() - group.sum(0).square().sum()) / len(group) ** 2
    return total


class BrainGNN(nn.Module):
    """``encode(fc)``: (B, R, R) connectivity → (B, classifier[-1]) features; ``regularisers(y)`` after a
    forward."""

    def __init__(self, config: BrainGNNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BrainGNNConfig()
        d1, d2 = c.dims
        self.convs = nn.ModuleList([RaGConv(c.n_rois, d1, c.n_rois, c.communities),
                                    RaGConv(d1, d2, c.n_rois, c.communities)])
        self.pools = nn.ModuleList([TopKPool(d1, c.pool_ratio), TopKPool(d2, c.pool_ratio)])
        h1, h2 = c.classifier
        self.classifier = nn.Sequential(nn.Linear(2 * (d1 + d2), h1), nn.ReLU(), nn.BatchNorm1d(h1),
                                        nn.Dropout(c.dropout), nn.Linear(h1, h2), nn.ReLU(), nn.BatchNorm1d(h2),
                                        nn.Dropout(c.dropout))
        self.scores: list[torch.Tensor] = []  # each block's (B, n) pooling scores, of the last forward

    @property
    def out_dim(self) -> int:
        return self.config.classifier[-1]

    def encode(self, fc: torch.Tensor) -> torch.Tensor:
        edges = connectome_graph(fc)
        rois = torch.arange(fc.shape[1], device=fc.device).expand(fc.shape[0], -1)  # (B, R)
        x, readouts, self.scores = fc, [], []
        for block, (conv, pool) in enumerate(zip(self.convs, self.pools, strict=True)):
            if block and self.config.two_hop:
                edges = two_hop_graph(edges)
            x, edges, rois, score = pool(conv(x, edges, rois), edges, rois)
            self.scores.append(score)
            readouts += [x.amax(dim=1), x.mean(dim=1)]  # (B, d) each
        return self.classifier(torch.cat(readouts, dim=1))

    def regularisers(self, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weighted unit, top-k and (for class labels ``y``) group consistency losses of the last forward."""
        c = self.config
        unit = sum((pool.weight.norm() - 1).square() for pool in self.pools)
        topk = sum(topk_loss(s, pool.kept(s.shape[1])) for s, pool in zip(self.scores, self.pools, strict=True))
        losses = {"unit_loss": c.unit_weight * unit, "topk_loss": c.topk_weight * topk}
        if y is not None:
            losses["consistency_loss"] = c.consistency_weight * consistency_loss(self.scores[0], y)
        return losses
