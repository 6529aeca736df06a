"""Regularised linear models on fixed features (linear probes, FC + linear), scikit-learn underneath.

Features are standardised; logistic regression (classification) or ridge (regression, targets in their
own units) with the regularisation strength chosen by cross-validation grouped by subject, so no subject
sits in two folds. With more features than samples (FC has R(R−1)/2) the standardised features are first
rotated onto the span of the training samples (PCA keeping every component): an L2-penalised linear
model's weights lie in that span, so the fit is the same and takes a fraction of the time.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def fit_linear(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, kind: str,
               balanced: bool = False, max_folds: int = 5) -> GridSearchCV:
    """Fit on (N, F) features; returns the refitted search (``best_estimator_``, ``best_params_``)."""
    steps = [StandardScaler()] + ([PCA()] if features.shape[1] > features.shape[0] else [])
    if kind == "regression":
        model, grid = make_pipeline(*steps, Ridge(solver="svd")), {"ridge__alpha": np.logspace(-2, 5, 15)}
    else:
        model = make_pipeline(*steps, LogisticRegression(max_iter=2000, class_weight="balanced" if balanced else None))
        grid = {"logisticregression__C": np.logspace(-4, 2, 13)}
    search = GridSearchCV(model, grid, cv=GroupKFold(min(max_folds, len(np.unique(groups)))))
    return search.fit(features, targets, groups=groups)


def linear_outputs(search: GridSearchCV, features: np.ndarray, kind: str, n_classes: int | None = None
                   ) -> np.ndarray:
    """(N, 1) predictions for regression; (N, 1) logits for two classes, (N, K) scores for K.

    Class labels are indices 0..K−1. With ``n_classes`` larger than the classes the model saw in training,
    the scores are laid out over all K columns and an unseen class scores −inf (probability 0)."""
    if kind == "regression":
        return search.predict(features)[:, None]
    scores = search.decision_function(features)
    seen = np.asarray(search.classes_).astype(int)
    if n_classes is None or len(seen) == n_classes:
        return scores[:, None] if scores.ndim == 1 else scores
    full = np.full((len(features), n_classes), -np.inf)
    if scores.ndim == 1:  # two seen classes: the logit of the second against the first
        full[:, seen[0]], full[:, seen[1]] = 0.0, scores
    else:
        full[:, seen] = scores
    return full


def linear_parameters(search: GridSearchCV) -> int:
    """Weights and intercepts of the fitted model in the original feature space."""
    final, n_features = search.best_estimator_[-1], search.best_estimator_[0].n_features_in_
    return int(np.size(final.coef_) // np.shape(np.atleast_2d(final.coef_))[1] * n_features + np.size(final.intercept_))
