"""ComBat harmonisation of features by site, fitted on training subjects only.

ComBat (Johnson et al. 2007; Fortin et al. 2017, 2018 for diffusion, thickness and FC) models every feature
as a grand mean plus a site shift γ and a site scale δ, with empirical-Bayes shrinkage of (γ, δ) across
features. The fit is `neuroCombat` (Fortin's package; `neuroHarmonize` pins numpy < 2 and pandas < 3, and
adds non-linear covariate terms that a batch-only fit does not use).

No covariates are protected: the usual candidate (the label being predicted) is unknown for test subjects,
and protecting it in the fit alone is the known route to optimistic results. What the fit learns comes from
the training rows only; a test row of a site seen in training is harmonised by that site's (γ*, δ*), row by
row. A site never seen in training (leave-site-out) has no fitted (γ*, δ*): its own are estimated from its
rows' features alone — no labels — against the training grand mean and pooled variance, with the same
empirical-Bayes step (neuroCombat's ``it_sol``), as ComBat estimates any one site. Needs ≥ 2 rows of it.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
from neuroCombat import neuroCombat
from neuroCombat.neuroCombat import aprior, bprior, it_sol


class ComBat:
    """``fit(features, sites)`` on training rows, then ``transform(features, sites)`` on any rows.

    features: (N, F) floats, one row per sample (clip, run); sites: (N,) site of each row. ``fitted_sites``
    lists the training sites; ``own_estimates`` the sites harmonised by their own estimates so far.
    """

    def __init__(self) -> None:
        self.fitted_sites: list[str] = []
        self.own_estimates: list[str] = []

    def fit(self, features: np.ndarray, sites: np.ndarray) -> ComBat:
        features, sites = _checked(features, sites)
        levels, counts = np.unique(sites, return_counts=True)
        if len(levels) < 2 or counts.min() < 2:
            raise ValueError(f"ComBat needs ≥ 2 training sites with ≥ 2 rows each; the training rows hold "
                             f"{dict(zip(levels.tolist(), counts.tolist(), strict=True))}")
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints every step
            fitted = neuroCombat(features.T, pd.DataFrame({"site": sites}), "site")["estimates"]
        self.fitted_sites = [str(s) for s in fitted["batches"]]
        self.mean = fitted["stand.mean"][:, 0]  # (F,) grand mean of the training rows
        self.scale = np.sqrt(fitted["var.pooled"][:, 0])  # (F,) pooled within-site standard deviation
        self.shift = dict(zip(self.fitted_sites, fitted["gamma.star"], strict=True))  # site → (F,) γ*
        self.spread = dict(zip(self.fitted_sites, fitted["delta.star"], strict=True))  # site → (F,) δ*
        return self

    def transform(self, features: np.ndarray, sites: np.ndarray) -> np.ndarray:
        """(N, F) harmonised rows, float64."""
        if not self.fitted_sites:
            raise RuntimeError("fit ComBat on the training rows first")
        features, sites = _checked(features, sites)
        standard = (features - self.mean) / self.scale  # (N, F) in units of the pooled training sd
        out = np.empty_like(standard)
        for site in map(str, np.unique(sites)):
            rows = sites == site
            if site in self.shift:
                shift, spread = self.shift[site], self.spread[site]
            else:
                shift, spread = self._own_estimates(standard[rows], site)
            out[rows] = (standard[rows] - shift) / np.sqrt(spread)
        return out * self.scale + self.mean

    def _own_estimates(self, standard: np.ndarray, site: str) -> tuple[np.ndarray, np.ndarray]:
        """(γ*, δ*) of a site unseen in training from its own standardised rows (n, F), empirical Bayes."""
        if len(standard) < 2:
            raise ValueError(f"site {site!r} was not among the training sites {self.fitted_sites} and has one "
                             "row: its scanner effect cannot be estimated from one sample")
        shift_hat = standard.mean(axis=0)
        spread_hat = standard.var(axis=0, ddof=1)
        spread_hat[spread_hat == 0] = 1.0
        shift, spread = it_sol(standard.T, shift_hat, spread_hat, shift_hat.mean(), shift_hat.var(ddof=1),
                               aprior(spread_hat), bprior(spread_hat))
        if site not in self.own_estimates:
            self.own_estimates.append(site)
        return shift, spread

    def summary(self) -> dict:
        """What the fit was, for a run's metrics.json."""
        return {"method": "combat", "package": "neuroCombat", "fitted_sites": self.fitted_sites,
                "sites_by_own_estimates": self.own_estimates, "covariates": []}


def harmonize_splits(features: dict[str, np.ndarray], sites: dict[str, np.ndarray], fit_on: tuple[str, ...]
                     ) -> tuple[dict[str, np.ndarray], dict]:
    """ComBat fitted on the rows of the ``fit_on`` sets, applied to every set: ({name: (N, F)}, summary)."""
    combat = ComBat().fit(np.concatenate([features[s] for s in fit_on]), np.concatenate([sites[s] for s in fit_on]))
    harmonised = {split: combat.transform(rows, sites[split]) if len(rows) else rows
                  for split, rows in features.items()}
    return harmonised, combat.summary()


def _checked(features: np.ndarray, sites: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    sites = np.asarray(sites).astype(str)
    if features.ndim != 2 or len(features) != len(sites):
        raise ValueError(f"features (N, F) and sites (N,) expected, got {features.shape} and {sites.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features hold NaN or infinite values: ComBat needs finite features")
    return features, sites
