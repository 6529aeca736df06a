"""Shared fixtures: a small simulated fMRIPrep cohort and its preprocessed store (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.simulate import CohortConfig, output_grid, simulate_cohort

TEST_DATA = Path(__file__).resolve().parent / "data"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"

if not torch.cuda.is_available():  # Triton kernels run on CPU tensors in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "2s")  # an unreachable scheduler fails fast
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test reaches the network: Hub ids resolve from a local cache


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """6 subjects, one 24-frame resting run each (TR 2 s), fMRIPrep res-2 RAS grid, participants.tsv."""
    out = tmp_path_factory.mktemp("cohort")
    simulate_cohort(out, CohortConfig(subjects=6, n_frames=24, tr=2.0, seed=3))
    return out


@pytest.fixture(scope="session")
def realistic_store(tmp_path_factory) -> Path:
    """The demo's simulator at test size: 12 subjects × 2 resting runs of 40 frames (TR 2 s, 4 mm, three
    sites, physiological noise, spikes), preprocessed onto the 4 mm grid with participants' labels."""
    out = tmp_path_factory.mktemp("realistic")
    simulate_cohort(out / "bids", CohortConfig(subjects=12, runs=2, n_frames=40, voxel_mm=4.0, seed=11))
    result = preprocess([out / "bids"], out / "store", PreprocessConfig(grid="mni152-fsl-4mm-48"), workers=2,
                        labels=out / "bids" / "participants.tsv", progress=False)
    assert not result.failures, result.failures
    return out / "store"


@pytest.fixture(scope="session")
def store(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "store"
    result = preprocess([cohort], out, PreprocessConfig(), progress=False)
    assert not result.failures
    return out


@pytest.fixture(scope="session")
def store_4mm(cohort, tmp_path_factory) -> Path:
    """The cohort on the 4 mm grid: the reference of tests that stop and resume preprocessing jobs."""
    out = tmp_path_factory.mktemp("store_4mm") / "store"
    result = preprocess([cohort], out, PreprocessConfig(grid="mni152-fsl-4mm-48"), progress=False)
    assert not result.failures
    return out


def write_run(path: Path, data: np.ndarray, affine: np.ndarray, tr: float | None = 2.0) -> Path:
    """Save a NIfTI with TR in the header (``tr=None`` leaves pixdim[4] at 0)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    if data.ndim == 4:
        img.header["pixdim"][4] = 0.0 if tr is None else tr
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def mni_brain_run(n_frames: int = 30, orientation: str = "RAS", voxel_mm: float = 2.0, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a noisy whole-brain run on an MNI grid, brain from nilearn's template mask."""
    from nilearn.datasets import load_mni152_brain_mask

    from neurostorm.data.grid import Reslicer

    grid = output_grid(voxel_mm, orientation)
    mask_img = load_mni152_brain_mask(resolution=2)
    brain = Reslicer(mask_img.affine, mask_img.shape, grid, order=0)(np.asarray(mask_img.dataobj, np.float32)) > 0
    rng = np.random.default_rng(seed)
    data = np.zeros((*grid.shape, n_frames), np.float32)
    data[brain] = 1000 + 20 * rng.standard_normal((brain.sum(), n_frames))
    return data, grid.affine


def blob_maker(grid):
    """A function centre (mm) → Gaussian blob (σ 12 mm) on ``grid``."""
    world = nib.affines.apply_affine(grid.affine, np.indices(grid.shape).reshape(3, -1).T).reshape(*grid.shape, 3)
    return lambda centre: np.exp(-np.sum((world - np.asarray(centre)) ** 2, axis=-1) / (2 * 12.0**2))


@pytest.fixture(scope="session")
def task_store(tmp_path_factory) -> Path:
    """A 4 mm store of 8 subjects, one 112-frame task run each (TR 0.8 s) with BIDS events beside it:
    blocks of 16 frames of three conditions, each brightening its own region, 4 rest frames between."""
    from neurostorm.data.grid import MNI152_FSL_4MM_48, template_brain_mask

    root = tmp_path_factory.mktemp("task")
    grid = MNI152_FSL_4MM_48
    brain = template_brain_mask(grid)
    blob = blob_maker(grid)
    regions = {"faces": blob((40, -50, -10)), "houses": blob((-30, -40, -10)), "tools": blob((-45, -60, 0))}
    order = ["faces", "houses", "tools", "houses", "tools", "faces"]
    rng = np.random.default_rng(1)
    for i in range(8):
        sid = f"sub-{i:02d}"
        pattern = np.ones((*grid.shape, 112), np.float32)
        rows = []
        for b, condition in enumerate(order):
            onset = 4 + b * 18
            pattern[..., onset:onset + 16] += 0.03 * regions[condition][..., None]
            rows.append(f"{onset * 0.8:.1f}\t{16 * 0.8:.1f}\t{condition}")
        data = np.zeros_like(pattern)
        data[brain] = 1000 * pattern[brain] * (1 + 0.01 * rng.standard_normal((brain.sum(), 112)))
        func = root / "bids" / sid / "func"
        write_run(func / f"{sid}_task-objects_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz", data, grid.affine,
                  tr=0.8)
        (func / f"{sid}_task-objects_events.tsv").write_text("onset\tduration\ttrial_type\n" + "\n".join(rows) + "\n")
    result = preprocess([root / "bids"], root / "store", PreprocessConfig(grid=grid.name), workers=2, progress=False)
    assert not result.failures, result.failures
    return root / "store"


@pytest.fixture(scope="session")
def retrieval_store(tmp_path_factory) -> tuple[Path, Path]:
    """(store, stimuli.npz): 10 subjects × 2 runs of 56 frames (TR 0.8 s), each run showing 6 "images" in
    blocks of 8 frames; an image's random 16-d embedding drives voxels through a fixed linear map (16 blobs),
    and every subject carries a fixed spatial fingerprint (for re-identification)."""
    from neurostorm.data.grid import MNI152_FSL_4MM_48, template_brain_mask

    root = tmp_path_factory.mktemp("retrieval")
    grid = MNI152_FSL_4MM_48
    brain = template_brain_mask(grid)
    blob = blob_maker(grid)
    rng = np.random.default_rng(2)
    centres = nib.affines.apply_affine(grid.affine, np.argwhere(brain)[rng.choice(brain.sum(), 16, replace=False)])
    encoding = np.stack([blob(c) for c in centres], axis=-1)  # (X, Y, Z, 16): the linear map
    names = [f"img{k}" for k in range(6)]
    embeddings = rng.standard_normal((6, 16)).astype(np.float32)
    np.savez(root / "stimuli.npz", names=np.array(names), embeddings=embeddings)
    for i in range(10):
        sid = f"sub-{i:02d}"
        fingerprint = 0.02 * (encoding @ rng.standard_normal(16))
        for run in (1, 2):
            pattern = np.ones((*grid.shape, 56), np.float32) + fingerprint[..., None]
            rows = []
            for b, k in enumerate(rng.permutation(6)):
                onset = 1 + b * 9
                pattern[..., onset:onset + 8] += 0.01 * (encoding @ embeddings[k])[..., None]
                rows.append(f"{onset * 0.8:.1f}\t{8 * 0.8:.1f}\t{names[k]}")
            data = np.zeros_like(pattern)
            data[brain] = 1000 * pattern[brain] * (1 + 0.01 * rng.standard_normal((brain.sum(), 56)))
            func = root / "bids" / sid / "func"
            stem = f"{sid}_task-images_run-{run}"
            write_run(func / f"{stem}_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz", data, grid.affine, tr=0.8)
            (func / f"{stem}_events.tsv").write_text("onset\tduration\ttrial_type\n" + "\n".join(rows) + "\n")
    result = preprocess([root / "bids"], root / "store", PreprocessConfig(grid=grid.name), workers=2, progress=False)
    assert not result.failures, result.failures
    return root / "store", root / "stimuli.npz"


@pytest.fixture(scope="session")
def labelled_store(tmp_path_factory) -> Path:
    """A 4 mm store of 40 subjects × 20 frames (TR 0.8 s) whose labels leave a visible trace in the BOLD:
    sex 'F' brightens a left-hemisphere blob, age scales a right-hemisphere blob, a 3-class diagnosis
    (CN twice as common) brightens its own midline blob; a phenotype 'score' mixes age and diagnosis."""
    from neurostorm.data.grid import MNI152_FSL_4MM_48, template_brain_mask

    root = tmp_path_factory.mktemp("labelled")
    grid = MNI152_FSL_4MM_48
    brain = template_brain_mask(grid)
    blob = blob_maker(grid)
    left, right = blob((-40, -20, 20)), blob((40, -20, 20))
    diagnosis_maps = {"ADHD": blob((0, 40, 10)), "CN": 0.0, "SZ": blob((0, -70, 30))}
    rng = np.random.default_rng(0)
    n = 40
    participants = {"participant_id": [f"sub-{i:02d}" for i in range(n)],
                    "sex": ["F" if i % 2 else "M" for i in range(n)], "age": np.round(rng.uniform(20, 80, n), 1),
                    "diagnosis": [["CN", "CN", "ADHD", "SZ"][i % 4] for i in range(n)]}  # imbalanced classes
    # a phenotype score mixing age and diagnosis, with noise
    participants["score"] = np.round((participants["age"] - 50) / 30 + 1.0 * (np.array(participants["diagnosis"])
                                     == "SZ") + 0.3 * rng.standard_normal(n), 3)
    for sid, sex, age, diagnosis, _ in zip(*participants.values(), strict=True):
        pattern = (1.0 + 0.04 * (sex == "F") * left + 0.04 * (age - 50) / 30 * right
                   + 0.04 * diagnosis_maps[diagnosis])
        data = np.zeros((*grid.shape, 20), np.float32)
        data[brain] = 1000 * pattern[brain][:, None] * (1 + 0.01 * rng.standard_normal((brain.sum(), 20)))
        write_run(root / "bids" / sid / "func" / f"{sid}_task-rest_space-MNI152NLin6Asym_desc-preproc_bold.nii.gz",
                  data, grid.affine, tr=0.8)
    import pandas as pd

    pd.DataFrame(participants).to_csv(root / "bids" / "participants.tsv", sep="\t", index=False)
    result = preprocess([root / "bids"], root / "store", PreprocessConfig(grid=grid.name), workers=2, progress=False)
    assert not result.failures, result.failures
    return root / "store"
