"""BrainNetCNN (Kawahara et al., 2017): convolutions shaped to a connectivity matrix.

An (R, R) matrix is treated as a one-channel image. Edge-to-edge (E2E) filters see a whole row and a whole
column through each edge (i, j): out[i, j] = Σ_k w_row[k]·A[i, k] + Σ_k w_col[k]·A[k, j], i.e. a (1 × R)
and an (R × 1) convolution broadcast back to (R, R). Edge-to-node (E2N) collapses each row to a node
value, node-to-graph (N2G) collapses the nodes; two dense layers follow (128 and 30 units, as in the paper and
the reference code). Leaky ReLU (slope 0.33) throughout, dropout before each dense layer, as in the paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class BrainNetCNNConfig:
    n_rois: int = 264  # defaults: the reference comparisons' sizes (16.3 M parameters at 264 ROIs)
    e2e_channels: tuple[int, ...] = (32, 64, 64, 64)
    e2n_channels: int = 128
    n2g_channels: int = 256
    hidden: int = 128  # dense layer after N2G
    head_hidden: int = 30  # second dense layer: the embedding the task head reads (0: none, the 128-d one)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        self.e2e_channels = tuple(int(c) for c in self.e2e_channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> BrainNetCNNConfig:
        """The configuration a pretrained folder records; folders saved before ``head_hidden`` existed had
        no second dense layer."""
        return cls(**{"head_hidden": 0, **saved})


class EdgeToEdge(nn.Module):
    """(B, C_in, R, R) → (B, C_out, R, R): row filter + column filter through every edge."""

    def __init__(self, c_in: int, c_out: int, n_rois: int) -> None:
        super().__init__()
        self.row = nn.Conv2d(c_in, c_out, kernel_size=(1, n_rois))
        self.col = nn.Conv2d(c_in, c_out, kernel_size=(n_rois, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row(x) + self.col(x)  # (B, C, R, 1) + (B, C, 1, R) → (B, C, R, R)


class BrainNetCNN(nn.Module):
    """``encode(fc)``: (B, R, R) connectivity → (B, hidden) features."""

    def __init__(self, config: BrainNetCNNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BrainNetCNNConfig()
        channels = (1, *c.e2e_channels)
        self.e2e = nn.ModuleList(EdgeToEdge(a, b, c.n_rois) for a, b in zip(channels[:-1], channels[1:],
                                                                               strict=True))
        self.e2n = nn.Conv2d(channels[-1], c.e2n_channels, kernel_size=(1, c.n_rois))
        self.n2g = nn.Conv2d(c.e2n_channels, c.n2g_channels, kernel_size=(c.n_rois, 1))
        widths = (c.n2g_channels, c.hidden, *((c.head_hidden,) if c.head_hidden else ()))
        self.dense = nn.Sequential(*(layer for a, b in zip(widths[:-1], widths[1:], strict=True)
                                     for layer in (nn.Dropout(c.dropout), nn.Linear(a, b), nn.LeakyReLU(0.33))))
        self.act = nn.LeakyReLU(0.33)

    @property
    def out_dim(self) -> int:
        return self.config.head_hidden or self.config.hidden

    def encode(self, fc: torch.Tensor) -> torch.Tensor:
        x = fc[:, None]  # (B, 1, R, R)
        for layer in self.e2e:
            x = self.act(layer(x))  # (B, C, R, R)
        x = self.act(self.e2n(x))  # (B, C_node, R, 1)
        x = self.act(self.n2g(x)).flatten(1)  # (B, C_graph)
        return self.dense(x)  # (B, out_dim)
