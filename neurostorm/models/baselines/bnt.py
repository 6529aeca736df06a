"""Brain Network Transformer (Kan et al., 2022): self-attention over ROIs, orthonormal clustering readout.

Each ROI is a token: its row of the connectivity matrix (R values) and a learned identity embedding of
``pos_dim`` values, so D = R + pos_dim. Each of ``len(pooling)`` blocks is one transformer encoder layer
over the n current tokens, then OCRead: a DEC encoder (an MLP over the flattened tokens,
n·D → 32 → 32 → n·D) gives node embeddings Z (n, D), which are softly assigned to K centres C (K, D)
initialised orthonormal by the squared-projection rule

    P = softmax_k( (Z Cᵀ)²_{ik} / ‖C_k‖ )        (n, K), rows sum to 1

and pooled to Pᵀ Z (K, D). A linear map D → 8 per cluster, flattened, and an MLP (256, 32) give the embedding.
Training adds the DEC clustering loss of every pooling block: KL(T ‖ P) with the sharpened target
T_ik ∝ P_ik² / Σ_i P_ik (``regularisers``). Sizes: ``bnt_sizes`` (the reference comparisons' 264-ROI
setting, scaled with R).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def bnt_sizes(n_rois: int) -> tuple[int, int]:
    """Clusters of the two pooling blocks: R/2 and R/10 (132 and 26 at 264 ROIs)."""
    return max(2, n_rois // 2), max(2, n_rois // 10)


@dataclass
class BNTConfig:
    n_rois: int = 264
    pooling: tuple[int, ...] = field(default_factory=tuple)  # clusters per block; () → bnt_sizes(n_rois)
    pos_dim: int = 32  # learned ROI identity appended to each FC row
    heads: int = 4  # reduced to 2 or 1 when D is not divisible
    feedforward: int = 1024
    dec_hidden: int = 32  # width of the DEC encoder MLP
    freeze_centres: bool = True  # the paper's setting: orthonormal centres stay fixed
    hidden: int = 256
    out: int = 32  # embedding size the task head reads
    dropout: float = 0.1
    cluster_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        self.pooling = tuple(int(k) for k in self.pooling) or bnt_sizes(self.n_rois)

    def to_dict(self) -> dict:
        return asdict(self)


def orthonormal_rows(rows: int, dim: int) -> torch.Tensor:
    """(rows, dim) with orthonormal rows (rows ≤ dim): Gram-Schmidt of a Xavier-uniform draw, via QR."""
    if rows > dim:
        raise ValueError(f"{rows} orthonormal centres do not fit in {dim} dimensions")
    draw = torch.empty(rows, dim)
    nn.init.xavier_uniform_(draw)
    q, r = torch.linalg.qr(draw.T)  # (dim, rows): Gram-Schmidt in order
    return (q * torch.sign(torch.diagonal(r))).T.contiguous()


class OCRead(nn.Module):
    """(B, n, D) tokens → (B, K, D) clusters and the (B, n, K) soft assignment."""

    def __init__(self, n_nodes: int, dim: int, clusters: int, hidden: int, freeze: bool) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_nodes * dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                     nn.LeakyReLU(), nn.Linear(hidden, n_nodes * dim))
        self.centres = nn.Parameter(orthonormal_rows(clusters, dim), requires_grad=not freeze)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """(B, n, D) node embeddings → (B, n, K) squared-projection soft assignment."""
        return torch.softmax((z @ self.centres.T).square() / self.centres.norm(dim=1), dim=-1)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = tokens.shape
        z = self.encoder(tokens.reshape(b, n * d)).reshape(b, n, d)
        assignment = self.assign(z)
        return assignment.transpose(1, 2) @ z, assignment  # (B, K, D), (B, n, K)


def clustering_loss(assignment: torch.Tensor) -> torch.Tensor:
    """DEC's KL(T ‖ P) over all (graph, node) rows of a (B, n, K) assignment, T the sharpened target."""
    p = assignment.reshape(-1, assignment.shape[-1])
    target = p.square() / p.sum(dim=0).clamp_min(1e-10)  # a cluster no node chose would give 0 / 0
    target = (target / target.sum(dim=1, keepdim=True)).detach()
    return F.kl_div(p.clamp_min(1e-10).log(), target, reduction="batchmean")


def _heads(dim: int, wanted: int) -> int:
    return next(h for h in (wanted, 4, 2, 1) if dim % h == 0)


class BNT(nn.Module):
    """``encode(fc)``: (B, R, R) connectivity → (B, out) features; ``regularisers()`` after a forward."""

    def __init__(self, config: BNTConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BNTConfig()
        dim = c.n_rois + c.pos_dim
        self.identity = nn.Parameter(nn.init.kaiming_normal_(torch.empty(c.n_rois, c.pos_dim))) if c.pos_dim else None
        nodes = (c.n_rois, *c.pooling)
        # biases kept in every layer (the NeuroSTORM reference's transformer layers have none: a defect)
        self.transformers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, _heads(dim, c.heads), c.feedforward, c.dropout, batch_first=True)
            for _ in c.pooling)
        self.readouts = nn.ModuleList(OCRead(n, dim, k, c.dec_hidden, c.freeze_centres)
                                      for n, k in zip(nodes[:-1], nodes[1:], strict=True))
        self.reduce = nn.Sequential(nn.Linear(dim, 8), nn.LeakyReLU())
        self.mlp = nn.Sequential(nn.Linear(8 * nodes[-1], c.hidden), nn.LeakyReLU(), nn.Dropout(c.dropout),
                                 nn.Linear(c.hidden, c.out), nn.LeakyReLU(), nn.Dropout(c.dropout))
        self.assignments: list[torch.Tensor] = []  # of the last forward, for the clustering loss

    @property
    def out_dim(self) -> int:
        return self.config.out

    def encode(self, fc: torch.Tensor) -> torch.Tensor:
        tokens = fc  # (B, R, R)
        if self.identity is not None:
            tokens = torch.cat([fc, self.identity.expand(fc.shape[0], -1, -1)], dim=-1)  # (B, R, D)
        self.assignments = []
        for transformer, readout in zip(self.transformers, self.readouts, strict=True):
            tokens, assignment = readout(transformer(tokens))  # (B, K, D), (B, n, K)
            self.assignments.append(assignment)
        return self.mlp(rearrange(self.reduce(tokens), "b k f -> b (k f)"))

    def regularisers(self, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weighted DEC clustering loss of the last forward, summed over pooling blocks."""
        total = sum(clustering_loss(a) for a in self.assignments)
        return {"cluster_loss": self.config.cluster_loss_weight * total}
