"""A simulated fMRIPrep-style BIDS derivatives cohort built on real MNI152 anatomy.

Anatomy comes from the ICBM 2009 templates that nilearn ships; functional networks from the Seitzman
(2018) coordinate atlas with its network labels. Each subject's network time courses are drawn with a
subject-specific covariance in which age, sex, a diagnosis and a continuous phenotype change chosen
couplings and amplitudes; they are convolved with a canonical HRF and placed on Gaussian blobs in grey
matter. On top: slow drift, thermal noise, respiratory and cardiac fluctuations (aliased at the TR,
strongest outside grey matter), occasional motion spikes, and per-site scanner intensity, bias field
and noise level. Optionally, susceptibility dropout: gradient-echo EPI loses signal where tissue meets air
(orbitofrontal cortex, inferior temporal lobes), so the brain mask holds voxels far darker than the rest.
Besides resting runs, optional task runs (blocks of three conditions, each with its own activation map,
and a BIDS ``events.tsv``) and stimulus runs (images whose random embedding vectors drive voxels through one
fixed linear encoding map; the embeddings are written to ``stimuli.npz``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import gamma

from neurostorm.data.grid import Grid, Reslicer

MNI_BOX_MM = ((-96.0, 96.0), (-132.0, 96.0), (-78.0, 114.0))  # the field of view fMRIPrep's MNI grids cover


DIAGNOSES = ("CN", "MDD", "SZ")
CONDITIONS = {"faces": [(40, -52, -18), (-40, -52, -18)], "houses": [(28, -44, -8), (-28, -44, -8)],
              "tools": [(-48, -64, -4), (-30, -40, 50)]}  # activation peaks (MNI mm) of the task conditions
DROPOUT_CENTRES = [(0, 36, -24), (-40, 0, -38), (40, 0, -38)]  # orbitofrontal, left/right temporal pole (MNI mm)


@dataclass(frozen=True)
class CohortConfig:
    subjects: int = 8
    runs: int = 1  # resting runs per subject
    n_frames: int = 60  # per resting run
    task_frames: int | None = None  # per task and stimulus run; None: n_frames
    tr: float = 2.0  # seconds
    voxel_mm: float = 2.0  # 2 gives fMRIPrep's res-2 grid (97×115×97)
    orientation: str = "RAS"  # "RAS" (fMRIPrep) or "LAS" (FSL)
    space: str = "MNI152NLin2009cAsym"
    tsnr: float = 80.0  # temporal SNR of grey matter (site noise scales it)
    sites: int = 3
    task_runs: int = 0  # block-design runs with events (faces / houses / tools)
    stimulus_runs: int = 0  # runs showing images whose embeddings drive the response
    n_images: int = 12
    embedding_dim: int = 32
    physio: bool = True  # respiratory and cardiac fluctuations
    spike_rate: float = 0.01  # share of frames hit by a motion spike
    contrast: float = 0.4  # baseline intensity ∝ (1 − contrast) + contrast × grey-matter fraction
    dropout: float = 0.0  # susceptibility signal loss at its centres (0: none; 0.95 leaves 5 % of the signal)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("contrast", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


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


def participants_table(config: CohortConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Ground truth: age, sex, diagnosis, site, and a phenotype score mixing them with noise.

    Sites get equal shares of the subjects; sex (F/M) and diagnosis (CN : MDD : SZ as 2 : 1 : 1) are dealt
    in turn over the subjects ordered by site, from a random point of each cycle, so every site and the
    whole cohort hold both sexes and every diagnosis as evenly as the counts allow (each dealt in its own
    random order within a site, so sex and diagnosis are not tied to each other)."""
    n = config.subjects
    sites = rng.permutation(np.arange(n) % max(1, config.sites))

    def deal(cycle: list[str]) -> np.ndarray:
        dealt = np.empty(n, dtype=object)
        order = np.lexsort((rng.random(n), sites))  # by site, in a new random order within each site
        dealt[order] = np.resize(np.roll(cycle, -int(rng.integers(len(cycle)))), n)
        return dealt

    table = pd.DataFrame({
        "participant_id": [f"sub-{i + 1:02d}" for i in range(n)],
        "age": np.round(rng.uniform(8, 85, n), 1),
        "sex": deal(["F", "M"]),
        "diagnosis": deal(["CN", "MDD", "CN", "SZ"]),
        "site": [f"site{k + 1}" for k in sites],
    })
    score = (0.5 * (table["age"] - 45) / 25 + 0.8 * (table["diagnosis"] == "SZ")
             - 0.4 * (table["diagnosis"] == "MDD") + 0.3 * (table["sex"] == "F") + rng.normal(0, 0.5, n))
    table["score"] = np.round(score, 3)
    return table


def _subject_covariance(k: int, subject, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(covariance, amplitudes) of the K network time courses: shared structure, then effects of age, sex,
    diagnosis and the phenotype score on fixed couplings and amplitudes, then subject noise."""
    base = np.full((k, k), 0.15) + np.eye(k) * 0.85
    age = (subject.age - 45.0) / 25.0
    effects = {(0, 1): 0.25 * age,  # a coupling that grows with age
               (2, 3): 0.3 if subject.sex == "F" else -0.1,  # one that differs by sex
               (4, 5): {"CN": 0.0, "MDD": -0.25, "SZ": 0.1}[subject.diagnosis],
               (1, 6): {"CN": 0.0, "MDD": 0.05, "SZ": -0.3}[subject.diagnosis],
               (7, 8): 0.15 * subject.score}
    for (i, j), effect in effects.items():
        base[i, j] = base[j, i] = 0.15 + effect
    noise = rng.normal(0, 0.05, (k, k))
    eigval, eigvec = np.linalg.eigh(base + (noise + noise.T) / 2)
    amplitudes = np.ones(k)
    amplitudes[9] *= 1.0 - 0.15 * age  # weaker with age
    amplitudes[10] *= 1.3 if subject.diagnosis == "SZ" else 1.0
    return (eigvec * np.clip(eigval, 0.05, None)) @ eigvec.T, amplitudes


@dataclass
class _Scanner:
    """What one site's scanner does to a run: intensity scale, smooth bias field, noise level."""

    scale: float
    bias: np.ndarray  # (V_brain,) multiplicative
    noise: float

    @classmethod
    def draw(cls, world: np.ndarray, rng: np.random.Generator) -> _Scanner:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        along = world @ direction
        bias = 1.0 + 0.08 * (along - along.mean()) / (np.ptp(along) / 2)
        return cls(scale=float(rng.uniform(0.85, 1.15)), bias=bias, noise=float(rng.uniform(0.8, 1.3)))


def _blobs(world: np.ndarray, centres, sigma_mm: float) -> np.ndarray:
    """Sum of Gaussian blobs (V,) at ``centres`` (mm)."""
    return sum(np.exp(-np.sum((world - np.asarray(c)) ** 2, axis=1) / (2 * sigma_mm**2)) for c in centres)


def _convolved(boxcars: np.ndarray, hrf: np.ndarray) -> np.ndarray:
    """HRF-convolved regressors (R, T) from boxcars (R, T)."""
    return np.stack([np.convolve(b, hrf)[: boxcars.shape[1]] for b in boxcars])


def _blocks(names: list[str], n_frames: int, tr: float, on_s: float, off_s: float, rng: np.random.Generator
            ) -> tuple[pd.DataFrame, np.ndarray]:
    """Blocks of ``on_s`` seconds separated by ``off_s`` of rest, conditions in shuffled cycles:
    (events table, boxcars (len(names), n_frames))."""
    rows, onset, order = [], off_s, []
    while onset + on_s <= n_frames * tr:
        if not order:
            order = list(rng.permutation(len(names)))
        rows.append((onset, on_s, names[order.pop()]))
        onset += on_s + off_s
    events = pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])
    times = np.arange(n_frames) * tr
    boxcars = np.zeros((len(names), n_frames))
    for start, duration, name in rows:
        boxcars[names.index(name), (times >= start) & (times < start + duration)] = 1.0
    return events, boxcars


def simulate_cohort(out: str | Path, config: CohortConfig | None = None) -> pd.DataFrame:
    """Write a BIDS derivatives folder to ``out`` (participants.tsv, per subject resting runs and the
    optional task and stimulus runs with their events, ``stimuli.npz``); returns the participants table."""
    config = config or CohortConfig()
    out = Path(out)
    rng = np.random.default_rng(config.seed)
    grid = output_grid(config.voxel_mm, config.orientation)
    gm, brain = _anatomy(grid)
    networks, maps = _network_maps(grid, brain, gm)
    world = nib.affines.apply_affine(grid.affine, np.argwhere(brain))  # (V_brain, 3) mm
    gm_brain = gm[brain]
    hrf = canonical_hrf(config.tr)
    edge = brain & ~ndimage.binary_erosion(brain)  # where head motion shows most
    signal_left = (1.0 - config.dropout * np.minimum(2.0 * _blobs(world, DROPOUT_CENTRES, 4.0), 1.0)).astype(np.float32)
    baseline = 1000.0 * (1.0 - config.contrast + config.contrast * gm_brain) * signal_left
    shared = _Shared(maps=maps, hrf=hrf, baseline=baseline, gm=gm_brain,
                     edge=edge[brain].astype(np.float64))
    participants = participants_table(config, rng)
    scanners = {site: _Scanner.draw(world, rng) for site in sorted(participants["site"].unique())}
    conditions = {name: _blobs(world, peaks, 8.0) * gm_brain for name, peaks in CONDITIONS.items()}
    image_names = [f"image{k + 1:02d}" for k in range(config.n_images)]
    embeddings = rng.standard_normal((config.n_images, config.embedding_dim)).astype(np.float32)
    grey = world[gm_brain > 0.5]
    encoding = np.stack([_blobs(world, grey[rng.choice(len(grey), 3)], 6.0) * gm_brain
                         for _ in range(config.embedding_dim)], axis=1)  # (V_brain, D): the fixed linear map
    patterns = encoding @ embeddings.T  # (V_brain, N images): each image's response, peak 1.5 %
    patterns *= 1.5 / np.abs(patterns).max()
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(json.dumps({
        "Name": "neurostorm simulated cohort", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "neurostorm simulate"}], "Networks": networks,
    }, indent=2))
    participants.to_csv(out / "participants.tsv", sep="\t", index=False)
    if config.stimulus_runs:
        np.savez(out / "stimuli.npz", names=np.array(image_names), embeddings=embeddings)
    task_frames = config.task_frames or config.n_frames
    for row in participants.itertuples():
        cov, amplitudes = _subject_covariance(len(networks), row, rng)
        run_signal = partial(_run_signal, shared, config, np.linalg.cholesky(cov), amplitudes, scanners[row.site],
                             rng)
        func = out / row.participant_id / "func"
        for run in range(1, config.runs + 1):
            _write_run(func, f"{row.participant_id}_task-rest_run-{run}", run_signal(config.n_frames), brain, grid,
                       config)
        for run in range(1, config.task_runs + 1):
            names = list(CONDITIONS)
            events, boxcars = _blocks(names, task_frames, config.tr, 12.0, 8.0, rng)
            task = 2.0 * np.stack([conditions[n] for n in names], axis=1) @ _convolved(boxcars, hrf)
            _write_run(func, f"{row.participant_id}_task-objects_run-{run}", run_signal(task_frames, task), brain,
                       grid, config, events)
        for run in range(1, config.stimulus_runs + 1):
            events, boxcars = _blocks(image_names, task_frames, config.tr, 6.0, 4.0, rng)
            response = patterns @ _convolved(boxcars, hrf)
            _write_run(func, f"{row.participant_id}_task-images_run-{run}", run_signal(task_frames, response), brain,
                       grid, config, events)
    return participants


@dataclass
class _Shared:
    """Per-voxel arrays every run uses (V_brain voxels)."""

    maps: np.ndarray  # (K, V) network maps
    hrf: np.ndarray
    baseline: np.ndarray  # scanner units
    gm: np.ndarray  # grey-matter fraction
    edge: np.ndarray  # 1 at the brain's edge


def _run_signal(shared: _Shared, config: CohortConfig, chol: np.ndarray, amplitudes: np.ndarray, scanner: _Scanner,
                rng: np.random.Generator, t_total: int, task_percent: np.ndarray | None = None) -> np.ndarray:
    """One run of ``t_total`` frames in scanner units (V_brain, T): networks + task + drift + physiology +
    noise + motion spikes."""
    n_pad = len(shared.hrf)
    latent = chol @ rng.standard_normal((len(chol), t_total + n_pad))
    courses = np.stack([np.convolve(c, shared.hrf)[n_pad:n_pad + t_total] for c in latent])
    courses *= amplitudes[:, None] / courses.std(axis=1, keepdims=True)
    percent = 1.5 * (shared.maps.T @ courses)  # (V_brain, T) percent signal change
    if task_percent is not None:
        percent += task_percent
    time = np.arange(t_total) * config.tr
    percent += np.outer(rng.normal(0, 0.5, len(shared.gm)), time / max(time[-1], 1.0))  # slow drift
    if config.physio:  # respiration ~0.3 Hz and heartbeat ~1.1 Hz, aliased by the TR; strongest outside GM
        outside_gm = 0.2 + 0.8 * (1.0 - shared.gm)
        for hz, amp in ((rng.uniform(0.25, 0.35), 0.4), (rng.uniform(1.0, 1.2), 0.25)):
            percent += amp * np.outer(outside_gm, np.sin(2 * np.pi * hz * time + rng.uniform(0, 2 * np.pi)))
    percent += rng.standard_normal(percent.shape) * (100.0 / config.tsnr) * scanner.noise
    spikes = rng.random(t_total) < config.spike_rate
    percent[:, spikes] += (2.0 + 6.0 * shared.edge[:, None]) * rng.choice([-1, 1], spikes.sum())
    return (shared.baseline * scanner.scale * scanner.bias)[:, None] * (1.0 + percent / 100.0)


def _write_run(func: Path, stem: str, signal: np.ndarray, brain: np.ndarray, grid: Grid, config: CohortConfig,
               events: pd.DataFrame | None = None) -> None:
    """Save a run as fMRIPrep names it (bold, brain mask, JSON sidecar) and its BIDS events beside it."""
    func.mkdir(parents=True, exist_ok=True)
    name = f"{stem}_space-{config.space}" + ("_res-2" if config.voxel_mm == 2.0 else "")
    bold = np.zeros((*grid.shape, signal.shape[1]), np.int16)
    bold[brain] = np.rint(signal).astype(np.int16)
    img = nib.Nifti1Image(bold, grid.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = config.tr
    nib.save(img, func / f"{name}_desc-preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), grid.affine), func / f"{name}_desc-brain_mask.nii.gz")
    task = stem.split("_task-")[1].split("_")[0]
    (func / f"{name}_desc-preproc_bold.json").write_text(
        json.dumps({"RepetitionTime": config.tr, "TaskName": task, "SkullStripped": False}))
    if events is not None:
        events.to_csv(func / f"{stem}_events.tsv", sep="\t", index=False, float_format="%.2f")
