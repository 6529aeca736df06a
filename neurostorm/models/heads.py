"""Task heads on pooled encoder embeddings (B, D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassificationHead(nn.Module):
    """(B, D) → logits: (B, 1) for two classes (use with BCE-with-logits), (B, K) for K > 2 classes."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        self.n_classes = n_classes
        self.fc = nn.Linear(dim, 1 if n_classes == 2 else n_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(embedding)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, n_classes) class probabilities: sigmoid for one logit, softmax for K."""
        if self.n_classes == 2:
            p = torch.sigmoid(logits[:, 0])
            return torch.stack([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)


class RegressionHead(nn.Module):
    """(B, D) → (B, 1), trained on standardised targets."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(embedding)


class EmbeddingHead(nn.Module):
    """(B, D) → (B, out_dim) unit vectors: linear (no bias) → BatchNorm → L2 normalisation (retrieval)."""

    def __init__(self, dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, out_dim, bias=False)
        self.norm = nn.BatchNorm1d(out_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.norm(self.fc(embedding)), dim=-1)
