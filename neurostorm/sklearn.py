"""scikit-learn estimators on NIfTI images: a frozen NeuroSTORM encoder as a pipeline step.

>>> from sklearn.linear_model import LogisticRegression
>>> from sklearn.model_selection import GroupKFold, cross_val_score
>>> from sklearn.pipeline import make_pipeline
>>> pipeline = make_pipeline(NeuroSTORMEmbedder(model="runs/pretrain/model"), LogisticRegression())
>>> cross_val_score(pipeline, bold_files, sex, groups=subjects, cv=GroupKFold(4))

Images are preprocessed in memory by the code ``neurostorm preprocess`` runs (affine reslicing onto the
model's grid, TR resampling, brain mask, normalisation, quantisation; the same checks and errors), using
the preprocessing recorded with the weights when the model folder has it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import nibabel as nib
import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from neurostorm.data.grid import GRIDS
from neurostorm.data.preprocess import PreprocessConfig, preprocess_image
from neurostorm.errors import InputError
from neurostorm.models import MODELS, build_model
from neurostorm.models.encoder import NeuroSTORM
from neurostorm.models.storm import STORM
from neurostorm.models.weights import CHECKPOINT_SUFFIXES, expected_preprocessing, from_pretrained
from neurostorm.train.data import pool_factor
from neurostorm.train.pooling import RunPooling, RunSeries, encode_run

POOLINGS = ("mean", "mean_std", "cov")  # attention pooling is learned with a task head: mode=probe


class NeuroSTORMEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """One embedding per 4D image: the mean of a frozen encoder's clip embeddings over the run.

    Parameters
    ----------
    model : str, path or NeuroSTORM
        A pretrained folder, Hub id, reference ``.ckpt``, registry name (random weights) or encoder.
    clip_frames : int
        Frames per clip (a multiple of the model's window length in time, at most its ``frames``).
    stride : int or None
        Frames between clip starts (None: ``clip_frames``, non-overlapping).
    pooling : "mean", "mean_std" or "cov"
        How the run's clips become one row (see :mod:`neurostorm.train.pooling`): the mean clip embedding
        (D), the mean and temporal std of the tokens (2D), or the correlation of the tokens' first 16
        principal components over time (120; the PCA is fitted on the images given to ``fit``).
    batch_size : int
        Clips encoded at once.
    device : str
        Torch device of the encoder, e.g. "cpu" or "cuda".
    tr : float or None
        The images' TR in seconds when neither header nor JSON sidecar holds it.

    ``transform(imgs)`` takes NIfTI paths or nibabel images and returns (n_images, D) float32.
    """

    def __init__(self, model: str | NeuroSTORM | None = None, clip_frames: int = 20, stride: int | None = None,
                 pooling: str = "mean", batch_size: int = 8, device: str = "cpu", tr: float | None = None) -> None:
        self.model = model
        self.clip_frames = clip_frames
        self.stride = stride
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.tr = tr

    def fit(self, X: Iterable | None = None, y: Iterable | None = None) -> NeuroSTORMEmbedder:
        """Load the encoder and the preprocessing it expects; ``pooling="cov"`` also fits its PCA on ``X``
        (nothing else is learned, and ``y`` is never used)."""
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self.encoder_ = encoder_of(self.model).to(self.device).eval()
        config = self.encoder_.config
        if self.clip_frames > config.frames or self.clip_frames % config.frame_multiple:
            raise ValueError(f"clip_frames {self.clip_frames}: the model takes up to {config.frames} frames in "
                             f"multiples of {config.frame_multiple}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be at least 1, got {self.stride}")
        self.preprocessing_ = preprocessing_for(self.model, config.img_size)
        self.pooling_ = RunPooling(self.pooling).fit(self._series(X) if self.pooling == "cov" else RunSeries())
        if self.pooling == "cov":
            k = self.pooling_.pca_.n_components_
            self._n_features_out = k * (k - 1) // 2
        else:
            self._n_features_out = config.out_dim * (2 if self.pooling == "mean_std" else 1)
        return self

    def transform(self, X: Iterable) -> np.ndarray:
        """(n_images, D) embeddings of 4D NIfTI paths or nibabel images."""
        check_is_fitted(self, "encoder_")
        return self.pooling_.transform(self._series(X))

    def _series(self, X: Iterable | None) -> RunSeries:
        if X is None:
            raise ValueError("pooling='cov' fits its PCA on the images given to fit(X)")
        series = RunSeries()
        for image in [X] if isinstance(X, (str, nib.Nifti1Image)) else list(X):
            series.add(_name(image), "", *encode_run(self.encoder_, self._clip_batches(image)))
        return series

    def _clip_batches(self, image) -> Iterator[torch.Tensor]:
        """The image's clips in batches (B, 1, X, Y, Z, T), preprocessed as ``neurostorm preprocess`` does."""
        frames = preprocess_image(image, self.preprocessing_, tr=self.tr)  # (T, X, Y, Z)
        starts = range(0, frames.shape[0] - self.clip_frames + 1, self.stride or self.clip_frames)
        if not starts:
            raise InputError(_name(image), f"{frames.shape[0]} frames after preprocessing, fewer than one clip "
                                           f"of {self.clip_frames}")
        for first in range(0, len(starts), self.batch_size):
            batch = np.stack([frames[s:s + self.clip_frames] for s in starts[first:first + self.batch_size]])
            yield torch.from_numpy(np.moveaxis(batch, 1, -1)[:, None]).to(self.device)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # images, not a numeric matrix
        tags.requires_fit = True
        return tags


def _name(image) -> str:
    return str(image) if not isinstance(image, nib.Nifti1Image) else image.get_filename() or "<in-memory image>"


def encoder_of(model: str | nn.Module | None) -> NeuroSTORM:
    """The clip encoder of a pretrained folder, Hub id, reference ``.ckpt``, registry name (random weights) or
    module (a STORM pretraining model gives its encoder)."""
    if model is None:
        raise ValueError("NeuroSTORMEmbedder needs model=: a pretrained folder, Hub id, .ckpt or registry name")
    if isinstance(model, nn.Module):
        loaded = model
    elif isinstance(model, str) and model in MODELS:
        loaded = build_model(model)
    else:
        loaded = from_pretrained(model)
    encoder = loaded.encoder if isinstance(loaded, STORM) else loaded
    if not isinstance(encoder, NeuroSTORM):
        raise InputError(str(model), f"a {type(encoder).__name__}, not an encoder of clips")
    return encoder


def preprocessing_for(model: object, img_size: tuple[int, int, int]) -> PreprocessConfig:
    """The preprocessing recorded with the weights; else the grid the model's input size reads."""
    recorded = isinstance(model, str) and model not in MODELS and not model.endswith(CHECKPOINT_SUFFIXES)
    params = expected_preprocessing(model) if recorded else {}
    if "grid" not in params:
        fitting = [name for name, grid in GRIDS.items() if pool_factor(grid.shape, img_size) is not None]
        if not fitting:
            raise InputError(str(model), f"no preprocessing grid fits the model's input of {img_size} voxels")
        params["grid"] = min(fitting, key=lambda name: GRIDS[name].shape[0])
    return PreprocessConfig(**params)
