"""Brain Network Transformer (Kan et al., 2022): self-attention over ROIs, orthonormal clustering readout.

Each ROI is a token whose features are its row of the connectivity matrix (D = R). Transformer encoder
layers mix the ROIs (no positional encoding: a row of FC already says which ROI it is). The readout
(OCRead) softly assigns the ROIs to K clusters whose centres E (K, D) start orthonormal:
P = softmax(Z Eᵀ) over clusters, pooled clusters Pᵀ Z (K, D); each is reduced to a few features and a
small MLP maps the flattened clusters to the embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from einops import rearrange
from torch import nn


@dataclass
class BNTConfig:
    n_rois: int = 264
    layers: int = 2
    heads: int = 4
    feedforward: int = 1024
    clusters: int = 100
    cluster_features: int = 8  # each pooled cluster reduced to this many features
    hidden: int = 256
    out: int = 32  # embedding size the task head reads
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class OrthonormalClusterReadout(nn.Module):
    """(B, R, D) tokens → (B, K, D) clusters: soft assignment to K learned centres initialised orthonormal."""

    def __init__(self, dim: int, clusters: int) -> None:
        super().__init__()
        centres = torch.empty(clusters, dim)
        nn.init.orthogonal_(centres)  # orthonormal rows when K ≤ D
        self.centres = nn.Parameter(centres)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        assignment = torch.softmax(tokens @ self.centres.T, dim=-1)  # (B, R, K)
        return assignment.transpose(1, 2) @ tokens  # (B, K, D)


class BNT(nn.Module):
    """``encode(fc)``: (B, R, R) connectivity → (B, out) features."""

    def __init__(self, config: BNTConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BNTConfig()
        if c.n_rois % c.heads:
            raise ValueError(f"BNT: {c.n_rois} ROIs (the token width) are not divisible by {c.heads} heads")
        layer = nn.TransformerEncoderLayer(c.n_rois, c.heads, c.feedforward, c.dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.readout = OrthonormalClusterReadout(c.n_rois, c.clusters)
        self.reduce = nn.Sequential(nn.Linear(c.n_rois, c.cluster_features), nn.LeakyReLU())
        self.mlp = nn.Sequential(nn.Linear(c.clusters * c.cluster_features, c.hidden), nn.LeakyReLU(),
                                 nn.Linear(c.hidden, c.out), nn.LeakyReLU())

    @property
    def out_dim(self) -> int:
        return self.config.out

    def encode(self, fc: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(fc)  # (B, R, R): ROI tokens with their FC rows as features
        clusters = self.reduce(self.readout(tokens))  # (B, K, cluster_features)
        return self.mlp(rearrange(clusters, "b k f -> b (k f)"))
