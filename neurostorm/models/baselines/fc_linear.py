"""FC + linear: the upper triangle of a Fisher-z connectivity matrix as features of a regularised linear
model (:mod:`neurostorm.models.linear`). No training loop; fits in seconds on a CPU."""

from __future__ import annotations

import numpy as np
import torch

from neurostorm.models.linear import fit_linear, linear_outputs, linear_parameters


def upper_triangle(fc: torch.Tensor) -> torch.Tensor:
    """(B, R, R) → (B, R(R−1)/2) entries above the diagonal."""
    rows, cols = torch.triu_indices(fc.shape[1], fc.shape[2], offset=1)
    return fc[:, rows, cols]


class FCLinear:
    """``fit(fc, targets, groups)`` then ``outputs(fc)``, with fc (N, R, R) Fisher-z matrices and groups the
    subject of each matrix (regularisation chosen by subject-grouped CV)."""

    def __init__(self, kind: str = "classification", balanced: bool = False) -> None:
        if kind not in ("classification", "regression"):
            raise ValueError(f"fc-linear predicts a classification or regression label, not {kind!r}")
        self.kind, self.balanced, self.fitted = kind, balanced, None

    def fit(self, fc: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> FCLinear:
        features = upper_triangle(torch.as_tensor(fc)).numpy()
        self.fitted = fit_linear(features, targets, groups, self.kind, self.balanced)
        return self

    def outputs(self, fc: np.ndarray) -> np.ndarray:
        """(N, 1) values or logits, (N, K) scores for K classes."""
        return linear_outputs(self.fitted, upper_triangle(torch.as_tensor(fc)).numpy(), self.kind)

    @property
    def n_parameters(self) -> int:
        return linear_parameters(self.fitted)
