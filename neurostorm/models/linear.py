"""Regularised linear models on fixed features (linear probes, FC + linear), scikit-learn underneath.

Features are standardised; logistic regression (classification) or ridge (regression, targets in their
own units) with the regularisation strength chosen by cross-validation grouped by subject, so no subject
sits in two folds. With more features than samples (FC has R(R−1)/2) the standardised features are first
rotated onto the span of the training samples (PCA keeping every component): an L2-penalised linear
model's weights lie in that span, so the fit is the same and takes a fraction of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass
class LinearFit:
    """Scaler [→ PCA] → linear model, refitted on every row with the strength that grouped CV chose."""

    model: Pipeline
    best_params: dict[str, float]  # {"logisticregression__C": C} or {"ridge__alpha": alpha}
    cv_scores: np.ndarray  # mean held-out accuracy (classification) or R² (regression) per strength of the grid

    @property
    def classes_(self) -> np.ndarray:
        return self.model.classes_

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.model.predict(features)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return self.model.decision_function(features)

    def score(self, features: np.ndarray, targets: np.ndarray) -> float:
        return self.model.score(features, targets)


def fit_linear(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, kind: str,
               balanced: bool = False, max_folds: int = 5) -> LinearFit:
    """Fit on (N, F) features with the strength of best mean held-out score over subject-grouped folds (the
    first of equals, as scikit-learn's grid search picks). Scaling and PCA are fitted once per fold, on its
    training rows, and shared by every strength."""
    if kind == "regression":
        name, grid = "ridge__alpha", np.logspace(-2, 5, 15)
    else:
        name, grid = "logisticregression__C", np.logspace(-4, 2, 13)

    def final(strength: float) -> Ridge | LogisticRegression:
        if kind == "regression":
            return Ridge(alpha=strength, solver="svd")
        return LogisticRegression(C=strength, max_iter=2000, class_weight="balanced" if balanced else None)

    def scaling() -> list:
        return [StandardScaler()] + ([PCA()] if features.shape[1] > features.shape[0] else [])

    scores = []
    for train, held in GroupKFold(min(max_folds, len(np.unique(groups)))).split(features, targets, groups):
        fold = make_pipeline(*scaling()).fit(features[train])
        seen, unseen = fold.transform(features[train]), fold.transform(features[held])
        scores.append([final(value).fit(seen, targets[train]).score(unseen, targets[held]) for value in grid])
    mean_scores = np.mean(scores, axis=0)
    best = float(grid[int(np.argmax(mean_scores))])
    model = make_pipeline(*scaling(), final(best)).fit(features, targets)
    return LinearFit(model, {name: best}, mean_scores)


def linear_outputs(fit: LinearFit, features: np.ndarray, kind: str, n_classes: int | None = None
                   ) -> np.ndarray:
    """(N, 1) predictions for regression; (N, 1) logits for two classes, (N, K) scores for K.

    Class labels are indices 0..K−1. With ``n_classes`` larger than the classes the model saw in training,
    the scores are laid out over all K columns and an unseen class scores −inf (probability 0)."""
    if kind == "regression":
        return fit.predict(features)[:, None]
    scores = fit.decision_function(features)
    seen = np.asarray(fit.classes_).astype(int)
    if n_classes is None or len(seen) == n_classes:
        return scores[:, None] if scores.ndim == 1 else scores
    full = np.full((len(features), n_classes), -np.inf)
    if scores.ndim == 1:  # two seen classes: the logit of the second against the first
        full[:, seen[0]], full[:, seen[1]] = 0.0, scores
    else:
        full[:, seen] = scores
    return full


def linear_parameters(fit: LinearFit) -> int:
    """Weights and intercepts of the fitted model in the original feature space."""
    final, n_features = fit.model[-1], fit.model[0].n_features_in_
    return int(np.size(final.coef_) // np.shape(np.atleast_2d(final.coef_))[1] * n_features + np.size(final.intercept_))
