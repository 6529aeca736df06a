"""Run-level features of a frozen encoder: one row per run from every clip of the whole run.

The encoder sees clips of ``data.sequence_length`` frames; a run gives a sequence of clips (every
``data.stride`` frames) and so, frame by frame, the last stage's tokens (d, h, w, C) over the whole run.
``pooling`` turns that into one row:

- ``mean``: the mean over clips of each clip's mean token (what ``encode`` returns); the probe then keeps
  today's clip-level fit (one row per clip, subjects scored on their averaged outputs);
- ``mean_std``: per channel, the mean and the temporal standard deviation of the spatially averaged tokens
  over the run's frames (2C): how strongly each learned feature fluctuates over minutes;
- ``cov``: a learned-feature connectome: each frame's tokens (positions × channels, first reduced to at
  most 256 by one fixed orthonormal random projection) → PCA to ``k`` components fitted on the training
  runs' frames only → their correlation over the run's frames (Ledoit-Wolf shrinkage, so a run with fewer
  frames than components still gives a well-conditioned matrix) → Fisher z of the upper triangle,
  k(k−1)/2 features;
- ``clip_attention``: attention pooling over the run's clip embeddings (a ← softmax(wᵀ tanh(V hᵢ)), Σ aᵢ hᵢ),
  trained with a linear head (Ilse et al., 2018), the epoch chosen on the validation subjects.

A run shorter than one clip has no row: it is skipped with a warning and counted in the results.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from torch import nn

from neurostorm.data.datasets import clip_tensor
from neurostorm.data.store import Store
from neurostorm.train.data import fit_to_model
from neurostorm.train.modules import label_loss

PROJECTED = 256  # frame features kept for cov after the fixed random projection


@dataclass
class RunSeries:
    """Per run: frame features (T, F), spatially averaged tokens per frame (T, C), clip embeddings (n, C)."""

    run_ids: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    frame_means: list[np.ndarray] = field(default_factory=list)
    clips: list[np.ndarray] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, run_id: str, subject: str, frames: np.ndarray, frame_means: np.ndarray, clips: np.ndarray) -> None:
        for name, value in zip(("run_ids", "subjects", "frames", "frame_means", "clips"),
                               (run_id, subject, frames, frame_means, clips), strict=True):
            getattr(self, name).append(value)

    def select(self, rows: Iterable[int]) -> RunSeries:
        """The runs at positions ``rows``, in that order."""
        chosen = RunSeries()
        for i in rows:
            chosen.add(self.run_ids[i], self.subjects[i], self.frames[i], self.frame_means[i], self.clips[i])
        return chosen

    def extend(self, other: RunSeries) -> None:
        for name in ("run_ids", "subjects", "frames", "frame_means", "clips", "skipped"):
            getattr(self, name).extend(getattr(other, name))


@functools.lru_cache(maxsize=4)
def _projection(features: int, seed: int = 0) -> torch.Tensor | None:
    """A fixed (features, PROJECTED) orthonormal random projection, or None when features ≤ PROJECTED."""
    if features <= PROJECTED:
        return None
    gaussian = torch.randn(features, PROJECTED, generator=torch.Generator().manual_seed(seed))
    return torch.linalg.qr(gaussian).Q


def encode_run(encoder: nn.Module, batches: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One run's clips, in batches (B, 1, X, Y, Z, T) → (frame features (T, F), spatially averaged tokens per
    frame (T, C), clip embeddings (n, C)); F is positions × channels, projected to PROJECTED if larger."""
    frames, means, clips = [], [], []
    with torch.no_grad():
        for x in batches:
            tokens = encoder(fit_to_model(x, encoder.config.img_size))  # (B, d, h, w, T, C)
            flat = rearrange(tokens, "b d h w t c -> (b t) (d h w c)")
            projection = _projection(flat.shape[1])
            frames.append((flat if projection is None else flat @ projection.to(flat)).cpu())
            means.append(rearrange(tokens.mean(dim=(1, 2, 3)), "b t c -> (b t) c").cpu())
            clips.append(tokens.mean(dim=(1, 2, 3, 4)).cpu())  # (B, C), as encode
    return torch.cat(frames).numpy(), torch.cat(means).numpy(), torch.cat(clips).numpy()


def run_series(encoder: nn.Module, store: Store, runs: pd.DataFrame, length: int, stride: int | None = None,
               batch_size: int = 4) -> RunSeries:
    """The encoder's outputs over every clip of each run of ``runs`` (rows with run_id, subject, n_frames)."""
    series = RunSeries()
    encoder.eval()
    for run in runs.itertuples():
        starts = list(range(0, int(run.n_frames) - length + 1, stride or length))
        if not starts:
            series.skipped.append(run.run_id)
            warnings.warn(f"{store.location}: run {run.run_id} has {run.n_frames} frames, fewer than one clip of "
                          f"{length}: skipped", stacklevel=2)
            continue
        batches = (torch.stack([clip_tensor(store, run.run_id, s, length) for s in starts[i:i + batch_size]])
                   for i in range(0, len(starts), batch_size))
        series.add(run.run_id, str(run.subject), *encode_run(encoder, batches))
    return series


class RunPooling:
    """``mean``, ``mean_std`` or ``cov`` features of runs; ``fit`` on training runs (cov's PCA)."""

    def __init__(self, pooling: str, components: int = 16) -> None:
        if pooling not in ("mean", "mean_std", "cov"):
            raise ValueError(f"pooling {pooling!r} has no fixed features (mean, mean_std or cov)")
        self.pooling, self.components = pooling, components

    def fit(self, train: RunSeries) -> RunPooling:
        if self.pooling == "cov":
            frames = np.concatenate(train.frames)
            k = min(self.components, frames.shape[1], frames.shape[0] - 1)
            self.pca_ = PCA(n_components=k, random_state=0).fit(frames)
        return self

    def transform(self, series: RunSeries) -> np.ndarray:
        """(n_runs, F) features, one row per run of ``series``."""
        return np.stack([self._features(i, series) for i in range(len(series.run_ids))]).astype(np.float32)

    def _features(self, i: int, series: RunSeries) -> np.ndarray:
        if self.pooling == "mean":
            return series.clips[i].mean(0)
        if self.pooling == "mean_std":
            means = series.frame_means[i]  # (T, C)
            return np.concatenate([means.mean(0), means.std(0)])
        z = self.pca_.transform(series.frames[i])  # (T, k)
        covariance = LedoitWolf().fit(z).covariance_
        scale = np.sqrt(np.diag(covariance))
        correlation = covariance / np.outer(scale, scale)
        upper = correlation[np.triu_indices_from(correlation, k=1)]
        return np.arctanh(np.clip(upper, -0.999999, 0.999999))


class AttentionPooling(nn.Module):
    """(n_clips, C) clip embeddings of one run → (outputs,): attention-weighted mean, then a linear head."""

    def __init__(self, dim: int, outputs: int, hidden: int = 32) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.head = nn.Linear(dim, outputs)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(clips), dim=0)  # (n_clips, 1)
        return self.head((weights * clips).sum(0))


def fit_attention(train: RunSeries, y_train: np.ndarray, val: RunSeries, y_val: np.ndarray, values: bool,
                  n_classes: int, epochs: int = 200, seed: int = 0) -> tuple[AttentionPooling, dict]:
    """Train attention pooling + head on the training runs (full batch, AdamW); keep the epoch with the
    lowest validation loss. ``values``: the label is a value (standardised on the training runs), not a class."""
    torch.manual_seed(seed)
    outputs = 1 if values or n_classes == 2 else n_classes
    mean, std = (float(y_train.mean()), float(y_train.std() or 1.0)) if values else (0.0, 1.0)
    every_clip = torch.from_numpy(np.concatenate(train.clips))  # (clips of all training runs, C)
    scaler = every_clip.mean(0), every_clip.std(0)  # features standardised on the training clips
    model = AttentionPooling(every_clip.shape[1], outputs)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)

    def loss_of(series: RunSeries, y: np.ndarray) -> torch.Tensor:
        out = torch.stack([model((torch.from_numpy(c) - scaler[0]) / (scaler[1] + 1e-6)) for c in series.clips])
        target = torch.as_tensor(y)
        return label_loss(out, (target.float() - mean) / std if values else target, values)

    best, best_state = np.inf, None
    for _ in range(epochs):
        model.train()
        loss = loss_of(train, y_train)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        model.eval()
        with torch.no_grad():
            held_out = float(loss_of(val, y_val)) if len(val.run_ids) else float(loss)
        if held_out < best:
            best, best_state = held_out, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), {"mean": mean, "std": std, "scaler": scaler}


def attention_outputs(model: AttentionPooling, fitted: dict, series: RunSeries, values: bool) -> np.ndarray:
    """(n_runs, outputs): logits, or (``values``) predictions in the label's units."""
    centre, spread = fitted["scaler"]
    with torch.no_grad():
        out = torch.stack([model((torch.from_numpy(c) - centre) / (spread + 1e-6)) for c in series.clips]).numpy()
    return out * fitted["std"] + fitted["mean"] if values else out
