"""NeuroSTORM and SwiFT from this package as Brainmarks models.

Brainmarks (PyPI ``brainmarks``) finds models in modules of its namespace package ``brainmarks.models``; this
package ships one, ``brainmarks/models/neurostorm_package.py``, that registers:

========================  ===============================================================================
``neurostorm_pkg``        a NeuroSTORM encoder from ``source=`` (a pretrained folder, Hub id or reference
                          ``.ckpt``); without it, the reference's MAE checkpoint of mask ratio 0.5 that
                          Brainmarks' own ``neurostorm`` model uses (``zxcvb20001/NeuroSTORM``, fetched
                          through the Hugging Face cache)
``neurostorm_pkg_0p8``    the same with the mask-ratio-0.8 checkpoint (Brainmarks' ``neurostorm_0p8``)
``neurostorm_pkg_tiny``   the tiny preset with random weights (smoke tests)
``swift_pkg``             SwiFT from ``source=``, else ``swift-base`` with random weights
``swift_pkg_tiny``        ``swift-tiny`` with random weights
========================  ===============================================================================

Every constructor takes ``mask=`` (the MNI152NLin6Asym 2 mm brain mask file; default: templateflow's, as
Brainmarks reads it) and ``max_windows=`` (clips per sample, default all). A Brainmarks sample is ``bold``
(T, V) over the mask's voxels (C order over (Z, Y, X) of the RAS image), ``mean`` and ``std`` (1, V) that undo
its voxel-wise normalisation, and ``tr`` (s). :class:`BrainmarksTransform` puts it back on the mask's grid as a
4D image and preprocesses it in memory exactly as ``neurostorm preprocess`` would (the TR, grid,
normalisation, fill and storage recorded with the weights), then cuts it into non-overlapping clips of the
model's length; :class:`BrainmarksModel` returns the mean clip embedding as ``cls_embeds`` (B, 1, D) — the
``NeuroSTORMEmbedder``'s mean pooling — and the last stage's tokens of every clip as ``patch_embeds``
(B, clips × positions × frames, D).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from einops import rearrange
from torch import nn

from neurostorm.data.preprocess import PreprocessConfig, preprocess_image
from neurostorm.errors import InputError
from neurostorm.models import build_model
from neurostorm.models.encoder import NeuroSTORM
from neurostorm.sklearn import encoder_of, preprocessing_for
from neurostorm.train.data import fit_to_model

MASK = {"template": "MNI152NLin6Asym", "resolution": 2, "desc": "brain", "suffix": "mask", "extension": "nii.gz"}
# the reference's MAE checkpoints Brainmarks' own neurostorm models load: (repository, file, revision)
HUB_CHECKPOINTS = {"0.5": ("zxcvb20001/NeuroSTORM", "fmrifound/pt_fmrifound_mae_ratio0.5.ckpt",
                           "e96ad7bcbf393d9e4c655f3064a5e42b89ca1664"),
                   "0.8": ("zxcvb20001/NeuroSTORM", "fmrifound/pt_fmrifound_mae_ratio0.8.ckpt",
                           "e96ad7bcbf393d9e4c655f3064a5e42b89ca1664")}


def mni_mask(mask: str | Path | None = None) -> nib.Nifti1Image:
    """The brain mask samples are read with, in RAS: ``mask`` (a file), else templateflow's
    MNI152NLin6Asym 2 mm ``desc-brain`` mask — from ``$TEMPLATEFLOW_HOME`` when it holds the file (laid out as
    templateflow lays it: ``tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz``), else
    downloaded by templateflow."""
    if mask is None:
        from templateflow import api as templateflow

        name = "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"
        try:
            found = templateflow.get(MASK["template"], **{k: v for k, v in MASK.items() if k != "template"})
        except Exception as err:  # no network and not in the templateflow home
            raise InputError("templateflow", f"cannot get {name} ({type(err).__name__}: {err}); give mask=PATH or "
                                             "set TEMPLATEFLOW_HOME to a folder holding tpl-MNI152NLin6Asym/"
                                             f"{name}") from None
        if not found:
            raise InputError("templateflow", f"no {name}: give mask=PATH or set TEMPLATEFLOW_HOME")
        mask = found
    if not Path(mask).is_file():
        raise InputError(mask, "no such mask file")
    image = nib.as_closest_canonical(nib.load(mask))
    if image.ndim != 3:
        raise InputError(mask, f"a brain mask is a 3D image, got shape {image.shape}")
    return image


class BrainmarksTransform:
    """A Brainmarks sample → ``bold`` (clips, 1, X, Y, Z, T) float32 on the weights' grid, preprocessed as
    ``neurostorm preprocess`` does with ``preprocessing``; ``clip_frames`` per clip, at most ``max_windows``
    clips from the start (None: all)."""

    def __init__(self, preprocessing: PreprocessConfig, clip_frames: int, mask: nib.Nifti1Image,
                 max_windows: int | None = None) -> None:
        self.preprocessing, self.clip_frames, self.max_windows = preprocessing, clip_frames, max_windows
        self.mask_zyx = np.asarray(mask.dataobj).T > 0  # Brainmarks orders voxels in C order over (Z, Y, X)
        self.affine = mask.affine
        self.voxels = int(self.mask_zyx.sum())

    def image(self, sample: dict) -> nib.Nifti1Image:
        """The sample as the 4D image it came from (X, Y, Z, T), its normalisation undone, 0 outside the mask."""
        bold = torch.as_tensor(sample["bold"], dtype=torch.float32)
        shape = tuple(bold.shape)
        if bold.ndim != 2 or shape[1] != self.voxels:
            raise InputError(f"sample of shape {shape}", f"expected (T, {self.voxels}): one value per voxel of the "
                                                        "brain mask at each frame")
        tr = float(sample["tr"]) if sample.get("tr") is not None else float("nan")
        if not np.isfinite(tr) or tr <= 0:
            raise InputError(f"sample of shape {shape}", f"tr {sample.get('tr')!r}: a positive repetition time in "
                                                        "seconds is needed to resample it")
        values = bold * torch.as_tensor(sample["std"]).reshape(1, -1) + torch.as_tensor(sample["mean"]).reshape(1, -1)
        data = np.zeros((shape[0], *self.mask_zyx.shape), np.float32)  # (T, Z, Y, X)
        data[:, self.mask_zyx] = values.numpy()
        image = nib.Nifti1Image(data.transpose(3, 2, 1, 0), self.affine)  # (X, Y, Z, T)
        image.header.set_zooms((*image.header.get_zooms()[:3], tr))
        return image

    def __call__(self, sample: dict) -> dict:
        image = self.image(sample)
        n_frames, tr = image.shape[3], float(image.header.get_zooms()[3])
        target_tr = self.preprocessing.tr or tr  # "keep": the sample's own
        # a clip is clip_frames × target_tr seconds; frames × tr seconds were acquired (each frame covers its TR)
        clips = int(n_frames * tr / (self.clip_frames * target_tr) + 1e-6)
        if clips < 1:
            raise InputError(f"sample of shape {tuple(np.shape(sample['bold']))}",
                             f"{n_frames} frames at TR {tr:g} s ({n_frames * tr:g} s) are shorter than one clip of "
                             f"{self.clip_frames} frames at TR {target_tr:g} s ({self.clip_frames * target_tr:g} s)")
        clips = clips if self.max_windows is None else min(clips, self.max_windows)
        config = replace(self.preprocessing, min_frames=1)  # the length is checked above, in seconds
        frames = preprocess_image(image, config, tr=tr)  # (T', X, Y, Z) at target_tr
        # resampling inside the acquired span can end a frame short of the last clip: its last frame repeated
        wanted = clips * self.clip_frames
        frames = np.concatenate([frames, np.repeat(frames[-1:], max(0, wanted - len(frames)), axis=0)])[:wanted]
        clips_tyxz = frames.reshape(clips, self.clip_frames, *frames.shape[1:])
        return {**sample, "bold": torch.from_numpy(np.ascontiguousarray(np.moveaxis(clips_tyxz, 1, -1))[:, None])}


class BrainmarksModel(nn.Module):
    """An encoder of clips as a Brainmarks model of MNI-space samples: ``forward(batch)`` with ``bold``
    (B, clips, 1, X, Y, Z, T) → (cls_embeds (B, 1, D), None, patch_embeds (B, L, D))."""

    __space__ = "mni"

    def __init__(self, encoder: NeuroSTORM, embeddings: type) -> None:
        super().__init__()
        self.encoder, self.embeddings = encoder.eval(), embeddings

    def forward(self, batch: dict):
        x = batch["bold"]
        samples = x.shape[0]
        clips = fit_to_model(x.flatten(0, 1), self.encoder.config.img_size)  # (B·clips, 1, X, Y, Z, T)
        tokens = self.encoder(clips)  # (B·clips, d, h, w, T, D)
        pooled = tokens.mean(dim=(1, 2, 3, 4)).unflatten(0, (samples, -1)).mean(dim=1, keepdim=True)  # (B, 1, D)
        patches = rearrange(tokens, "(b n) d h w t c -> b (n d h w t) c", b=samples)
        return self.embeddings(cls_embeds=pooled, reg_embeds=None, patch_embeds=patches)


def brainmarks_pair(model: str | Path | nn.Module, embeddings: type, mask: str | Path | None = None,
                    max_windows: int | None = None) -> tuple[BrainmarksTransform, BrainmarksModel]:
    """Brainmarks' (transform, model) for an encoder given as :func:`neurostorm.sklearn.encoder_of` takes
    it; ``embeddings`` is Brainmarks' ``Embeddings`` tuple type."""
    source = str(model) if isinstance(model, Path) else model
    encoder = encoder_of(source)
    preprocessing = preprocessing_for(source, encoder.config.img_size)
    transform = BrainmarksTransform(preprocessing, encoder.config.frames, mni_mask(mask), max_windows)
    return transform, BrainmarksModel(encoder, embeddings)


def hub_checkpoint(variant: str) -> Path:
    """The reference's MAE checkpoint of mask ratio ``variant`` ("0.5" or "0.8") through the Hugging Face
    cache (downloaded where a network exists)."""
    from huggingface_hub import hf_hub_download

    if variant not in HUB_CHECKPOINTS:
        raise InputError("variant", f"{variant!r}: one of {sorted(HUB_CHECKPOINTS)}")
    repository, filename, revision = HUB_CHECKPOINTS[variant]
    return Path(hf_hub_download(repo_id=repository, filename=filename, revision=revision))


def random_model(name: str) -> nn.Module:
    """A registry model with seeded random weights (the same weights at every call)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model(name)
