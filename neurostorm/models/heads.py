"""Task heads on pooled encoder embeddings (B, D), optionally standardising them first."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Standardise(nn.Module):
    """(B, D) → (B, D): (x − centre) / sd per dimension — a linear probe's scaling, for a head on embeddings
    whose spread across clips is a tiny fraction of their magnitude. ``mean`` and ``sd`` are statistics of the
    training clips' embeddings (buffers, saved with the head; :meth:`fit`); in evaluation the centre is
    ``mean``. ``track_encoder`` is for an encoder whose weights train (full fine-tuning): each step of it
    shifts every clip's embedding by nearly the same vector, many times their spread, while the spread and
    the clips' arrangement hold — so in training each batch is centred by its own mean, and the statistics
    are refitted before each validation (:class:`~neurostorm.train.modules.AdaptModule`). Otherwise (prompt
    tuning, LoRA) the statistics fitted as training starts centre every batch."""

    def __init__(self, dim: int, track_encoder: bool = False) -> None:
        super().__init__()
        self.track_encoder = track_encoder
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("sd", torch.ones(dim))

    def fit(self, embeddings: torch.Tensor) -> None:
        """Statistics of (N, D) embeddings; a dimension that does not vary keeps sd 1."""
        sd = embeddings.std(dim=0)
        self.mean.copy_(embeddings.mean(dim=0))
        self.sd.copy_(torch.where(sd > 0, sd, torch.ones_like(sd)))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        batch_centre = self.track_encoder and self.training  # a batch of one clip then reads 0: only the bias learns
        centre = embedding.mean(dim=0, keepdim=True) if batch_centre else self.mean
        return (embedding - centre) / self.sd


class ClassificationHead(nn.Module):
    """(B, D) → logits: (B, 1) for two classes (use with BCE-with-logits), (B, K) for K > 2 classes;
    ``standardise``: the embedding is first standardised (:class:`Standardise`, ``track_encoder`` passed on)."""

    def __init__(self, dim: int, n_classes: int, standardise: bool = False, track_encoder: bool = False) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        self.n_classes = n_classes
        self.scale = Standardise(dim, track_encoder) if standardise else nn.Identity()
        self.fc = nn.Linear(dim, 1 if n_classes == 2 else n_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(self.scale(embedding))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, n_classes) class probabilities: sigmoid for one logit, softmax for K."""
        if self.n_classes == 2:
            p = torch.sigmoid(logits[:, 0])
            return torch.stack([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)


class RegressionHead(nn.Module):
    """(B, D) → (B, 1), trained on standardised targets; ``standardise`` as :class:`ClassificationHead`."""

    def __init__(self, dim: int, standardise: bool = False, track_encoder: bool = False) -> None:
        super().__init__()
        self.scale = Standardise(dim, track_encoder) if standardise else nn.Identity()
        self.fc = nn.Linear(dim, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(self.scale(embedding))


class EmbeddingHead(nn.Module):
    """(B, D) → (B, out_dim) unit vectors: linear (no bias) → BatchNorm → L2 normalisation (retrieval)."""

    def __init__(self, dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, out_dim, bias=False)
        self.norm = nn.BatchNorm1d(out_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.norm(self.fc(embedding)), dim=-1)
