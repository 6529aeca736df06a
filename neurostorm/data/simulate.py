"""A simulated fMRIPrep-style BIDS derivatives cohort built on real MNI152 anatomy.

Anatomy comes from the ICBM 2009 templates that nilearn ships; functional networks from the Seitzman
(2018) coordinate atlas with its network labels. Each subject's network time courses are drawn with a
subject-specific covariance in which age and sex change chosen couplings and amplitudes, convolved with a
canonical HRF, placed on Gaussian blobs in grey matter, and mixed with slow drift and thermal noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.stats import gamma

from neurostorm.data.grid import Grid, Reslicer

MNI_BOX_MM = ((-96.0, 96.0), (-132.0, 96.0), (-78.0, 114.0))  # the field of view fMRIPrep's MNI grids cover


@dataclass(frozen=True)
class CohortConfig:
    subjects: int = 8
    runs: int = 1  # resting runs per subject
    n_frames: int = 60
    tr: float = 2.0  # seconds
    voxel_mm: float = 2.0  # 2 gives fMRIPrep's res-2 grid (97×115×97)
    orientation: str = "RAS"  # "RAS" (fMRIPrep) or "LAS" (FSL)
    space: str = "MNI152NLin2009cAsym"
    tsnr: float = 80.0  # temporal SNR of grey matter
    seed: int = 0


def output_grid(voxel_mm: float, orientation: str) -> Grid:
    """The MNI field of view at ``voxel_mm`` in RAS or LAS voxel order."""
    shape = tuple(int(round((hi - lo) / voxel_mm)) + 1 for lo, hi in MNI_BOX_MM)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = [lo for lo, _ in MNI_BOX_MM]
    if orientation == "LAS":
        affine[0, 0], affine[0, 3] = -voxel_mm, MNI_BOX_MM[0][1]
    elif orientation != "RAS":
        raise ValueError(f"orientation must be RAS or LAS, got {orientation!r}")
    return Grid(f"mni-{voxel_mm:g}mm-{orientation}", shape, tuple(map(tuple, affine)))


def canonical_hrf(tr: float, duration: float = 32.0) -> np.ndarray:
    """Double-gamma HRF (peak ≈ 5 s, undershoot ≈ 15 s) sampled every ``tr`` seconds, unit sum."""
    t = np.arange(0.0, duration, tr)
    hrf = gamma.pdf(t, 6.0) - gamma.pdf(t, 16.0) / 6.0
    return hrf / hrf.sum()


def _anatomy(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template

    gm_img, mask_img = load_mni152_gm_template(resolution=2), load_mni152_brain_mask(resolution=2)
    gm = Reslicer(gm_img.affine, gm_img.shape, grid, order=1)(np.asarray(gm_img.dataobj, np.float32))
    brain = Reslicer(mask_img.affine, mask_img.shape, grid, order=0)(np.asarray(mask_img.dataobj, np.float32))
    return np.clip(gm, 0, 1), brain > 0.5


def _network_maps(grid: Grid, brain: np.ndarray, gm: np.ndarray, sigma_mm: float = 5.0
                  ) -> tuple[list[str], np.ndarray]:
    """(networks, maps (K, V_brain)): Gaussian blobs at each network's Seitzman ROIs, weighted by GM."""
    from nilearn.datasets import fetch_coords_seitzman_2018

    atlas = fetch_coords_seitzman_2018()
    coords = np.asarray(atlas.rois[["x", "y", "z"]], dtype=np.float64)
    labels = np.asarray(atlas.networks).astype(str)
    networks = sorted(set(labels) - {"unassigned"})
    voxels = np.argwhere(brain)
    world = nib.affines.apply_affine(grid.affine, voxels)  # (V_brain, 3) mm
    maps = np.zeros((len(networks), len(voxels)), np.float32)
    for k, name in enumerate(networks):
        for centre in coords[labels == name]:
            dist2 = np.sum((world - centre) ** 2, axis=1)
            maps[k] += np.exp(-dist2 / (2 * sigma_mm**2)).astype(np.float32)
    return networks, np.minimum(maps, 1.0) * gm[brain][None, :]


def _subject_covariance(k: int, age: float, sex: str, rng: np.random.Generator) -> np.ndarray:
    """Network covariance: shared structure + age/sex effects on fixed couplings + subject noise."""
    base = np.full((k, k), 0.15) + np.eye(k) * 0.85
    effect = (age - 45.0) / 25.0
    base[0, 1] = base[1, 0] = 0.15 + 0.25 * effect  # coupling that grows with age
    base[2, 3] = base[3, 2] = 0.15 + (0.3 if sex == "F" else -0.1)  # coupling that differs by sex
    noise = rng.normal(0, 0.05, (k, k))
    cov = base + (noise + noise.T) / 2
    eigval, eigvec = np.linalg.eigh(cov)
    return (eigvec * np.clip(eigval, 0.05, None)) @ eigvec.T


def simulate_cohort(out: str | Path, config: CohortConfig | None = None) -> pd.DataFrame:
    """Write a BIDS derivatives folder of resting runs to ``out``; returns the participants table."""
    config = config or CohortConfig()
    out = Path(out)
    rng = np.random.default_rng(config.seed)
    grid = output_grid(config.voxel_mm, config.orientation)
    gm, brain = _anatomy(grid)
    networks, maps = _network_maps(grid, brain, gm)
    hrf = canonical_hrf(config.tr)
    baseline = 1000.0 * (0.6 + 0.4 * gm[brain])  # (V_brain,) scanner units
    participants = pd.DataFrame({
        "participant_id": [f"sub-{i + 1:02d}" for i in range(config.subjects)],
        "age": np.round(rng.uniform(8, 85, config.subjects), 1),
        "sex": rng.choice(["F", "M"], config.subjects),
    })
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(json.dumps({
        "Name": "neurostorm simulated cohort", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "neurostorm simulate"}], "Networks": networks,
    }, indent=2))
    participants.to_csv(out / "participants.tsv", sep="\t", index=False)
    for row in participants.itertuples():
        cov = _subject_covariance(len(networks), row.age, row.sex, rng)
        chol = np.linalg.cholesky(cov)
        for run in range(1, config.runs + 1):
            n_pad = len(hrf)
            latent = chol @ rng.standard_normal((len(networks), config.n_frames + n_pad))
            courses = np.stack([np.convolve(c, hrf)[n_pad:n_pad + config.n_frames] for c in latent])
            courses /= courses.std(axis=1, keepdims=True)  # (K, T) unit-variance BOLD courses
            signal = maps.T @ courses  # (V_brain, T)
            time = np.arange(config.n_frames) * config.tr
            drift = np.outer(rng.normal(0, 0.5, brain.sum()), time / max(time[-1], 1.0))
            noise = rng.standard_normal(signal.shape) * (100.0 / config.tsnr)
            percent = 1.5 * signal + drift + noise
            bold = np.zeros((*grid.shape, config.n_frames), np.int16)
            bold[brain] = np.rint(baseline[:, None] * (1.0 + percent / 100.0)).astype(np.int16)
            stem = f"{row.participant_id}_task-rest_run-{run}_space-{config.space}"
            if config.voxel_mm == 2.0:
                stem += "_res-2"
            func = out / row.participant_id / "func"
            func.mkdir(parents=True, exist_ok=True)
            img = nib.Nifti1Image(bold, grid.affine)
            img.header.set_xyzt_units("mm", "sec")
            img.header["pixdim"][4] = config.tr
            nib.save(img, func / f"{stem}_desc-preproc_bold.nii.gz")
            nib.save(nib.Nifti1Image(brain.astype(np.uint8), grid.affine), func / f"{stem}_desc-brain_mask.nii.gz")
            (func / f"{stem}_desc-preproc_bold.json").write_text(
                json.dumps({"RepetitionTime": config.tr, "TaskName": "rest", "SkullStripped": False}))
    return participants
