"""Quality measures of a stored run, and the flags that say which runs to look at first.

Every measure is taken on the run as stored (the frames on the grid, at the store's TR), streaming one frame
at a time, so a run of any length costs two brain-sized vectors:

- ``qc_tsnr``: temporal SNR (mean over time / standard deviation over time) of each brain voxel, in the
  source's units (the run's normalisation undone), averaged over the brain mask;
- ``qc_dvars_outliers``: the share of frames whose DVARS (root mean square over brain voxels of the change
  from the frame before, normalised units) lies more than ``QCThresholds.dvars_z`` robust standard deviations
  (1.4826 × the median absolute deviation) above the run's median DVARS — spikes, sudden motion;
- ``qc_flip``: ``"y"`` or ``"z"`` when the run's brain mask matches the MNI brain better mirrored front to back
  or top to bottom than as it is — a header whose axes disagree with the data; a left-right mirror keeps the
  brain's shape and cannot be seen this way;
- ``qc_flags``: the names of the checks a run fails (``orientation``, ``coverage``, ``tsnr``, ``spikes``,
  ``quantization``), ``;``-separated, empty when none; thresholds in :class:`QCThresholds`.

:func:`measure_run` also returns the per-frame series (global signal, DVARS) and the mean and tSNR maps that
the report draws.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from neurostorm.data.grid import Grid, template_brain_mask
from neurostorm.data.store import Store

QC_COLUMNS = ("qc_tsnr", "qc_dvars_outliers", "qc_flip", "qc_flags")


@dataclass(frozen=True)
class QCThresholds:
    """When a run is flagged. The defaults flag what fMRIPrep's and MRIQC's users look for first."""

    dvars_z: float = 5.0  # a frame's DVARS this many robust SDs above the run's median is an outlier
    max_outlier_share: float = 0.05  # flag "spikes" above this share of outlier frames
    min_tsnr: float = 20.0  # flag "tsnr" below this mean brain tSNR (source units)
    min_coverage: float = 0.8  # flag "coverage" when less of the template brain is covered
    max_quantization_rmse: float = 0.05  # flag "quantization" above this RMSE (normalised units, int8 storage)
    flip_margin: float = 0.05  # flag "orientation" when a mirrored mask's Dice beats the mask's by this much


DEFAULT_THRESHOLDS = QCThresholds()


@dataclass
class RunMeasures:
    """What :func:`measure_run` takes from one run: per-frame series (T,) and maps on the grid (X, Y, Z)."""

    global_signal: np.ndarray  # mean over brain voxels, normalised units
    dvars: np.ndarray  # (T,), the first frame NaN
    outliers: np.ndarray  # (T,) bool
    mean_map: np.ndarray  # normalised units
    tsnr_map: np.ndarray  # 0 outside the brain
    carpet: np.ndarray  # (V, T) a spread sample of brain voxels (at most 3,000), normalised units
    columns: dict  # the qc_* values of the manifest


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def mirrored_axis(mask: np.ndarray, template: np.ndarray, margin: float) -> str:
    """``"y"`` or ``"z"`` where the mask mirrored along that voxel axis matches the template by ``margin``
    more Dice than the mask itself (the grid's axes are x, y, z in RAS/LAS order), else ``""``."""
    as_is = dice(mask, template)
    scores = {name: dice(np.flip(mask, axis=axis), template) for name, axis in (("y", 1), ("z", 2))}
    best = max(scores, key=scores.get)
    return best if scores[best] > as_is + margin else ""


def robust_outliers(series: np.ndarray, z: float) -> np.ndarray:
    """Values more than ``z`` robust SDs (1.4826 × MAD) above the median; NaN is never an outlier."""
    finite = series[np.isfinite(series)]
    if not len(finite):
        return np.zeros(len(series), dtype=bool)
    median = np.median(finite)
    spread = 1.4826 * np.median(np.abs(finite - median)) or (np.std(finite) or 1.0)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num((series - median) / spread, nan=-np.inf) > z


def measure_run(store: Store, run_id: str, record: dict, grid: Grid,
                thresholds: QCThresholds = DEFAULT_THRESHOLDS) -> RunMeasures:
    """Stream a stored run once and take its measures; ``record`` is its manifest row."""
    mask = store.read_mask(run_id)
    brain = np.flatnonzero(mask)
    n_frames = store.n_frames(run_id)
    carpet_rows = brain[np.linspace(0, len(brain) - 1, min(3000, len(brain))).astype(int)] if len(brain) else brain
    total, total_sq = np.zeros(len(brain)), np.zeros(len(brain))
    global_signal, dvars, carpet = np.zeros(n_frames), np.full(n_frames, np.nan), np.zeros((len(carpet_rows), n_frames))
    previous, t = None, 0
    for block in store.iter_frames(run_id):  # (≤20, X, Y, Z) float32
        flat = block.reshape(len(block), -1)
        for frame in flat:
            values = frame[brain].astype(np.float64)
            total += values
            total_sq += values**2
            global_signal[t] = values.mean() if len(values) else np.nan
            if previous is not None:
                dvars[t] = np.sqrt(np.mean((values - previous) ** 2))
            carpet[:, t] = frame[carpet_rows]
            previous, t = values, t + 1
    mean = total / max(1, n_frames)
    std = np.sqrt(np.maximum(total_sq / max(1, n_frames) - mean**2, 0.0))
    offset, divisor = _normalisation(record)
    source_mean, source_std = mean * divisor + offset, std * abs(divisor)  # the run's units before normalising
    tsnr = np.divide(source_mean, source_std, out=np.zeros_like(source_mean), where=source_std > 1e-12)
    mean_map, tsnr_map = np.zeros(mask.shape, np.float32), np.zeros(mask.shape, np.float32)
    mean_map.flat[brain], tsnr_map.flat[brain] = mean, tsnr
    outliers = robust_outliers(dvars, thresholds.dvars_z)
    flip = mirrored_axis(mask, template_brain_mask(grid), thresholds.flip_margin)
    columns = {"qc_tsnr": float(np.mean(tsnr)) if len(tsnr) else 0.0,
               "qc_dvars_outliers": float(outliers.sum() / max(1, n_frames - 1)), "qc_flip": flip}
    columns["qc_flags"] = ";".join(run_flags({**record, **columns}, thresholds))
    return RunMeasures(global_signal, dvars, outliers, mean_map, tsnr_map, carpet, columns)


def _normalisation(record: dict) -> tuple[float, float]:
    """(offset, divisor) with source value = stored value × divisor + offset, from the run's record."""
    params = record.get("params")
    params = json.loads(params) if isinstance(params, str) else params or {}
    if params.get("normalization") == "minmax":
        return float(record["norm_min"]), float(record["norm_max"]) - float(record["norm_min"])
    return float(record["norm_mean"]), float(record["norm_std"])


def run_flags(row: dict, thresholds: QCThresholds = DEFAULT_THRESHOLDS) -> list[str]:
    """The checks a run's manifest row (with its qc_* values) fails, in a fixed order."""
    flags = []
    if row.get("qc_flip"):
        flags.append("orientation")
    if float(row.get("mni_coverage", 1.0)) < thresholds.min_coverage:
        flags.append("coverage")
    if float(row.get("qc_tsnr", np.inf)) < thresholds.min_tsnr:
        flags.append("tsnr")
    if float(row.get("qc_dvars_outliers", 0.0)) > thresholds.max_outlier_share:
        flags.append("spikes")
    if row.get("storage") == "int8" and float(row.get("quantization_rmse", 0.0)) > thresholds.max_quantization_rmse:
        flags.append("quantization")
    return flags
