"""ROI time series and functional connectivity from a preprocessed store.

Output folder::

    atlas.json                  atlas name, source and ROI names
    rois.tsv                    index, name, voxels on the grid, centroid (mm)
    timeseries/<run_id>.npy     (T, R) float32 mean normalised signal per ROI
    fc.npz                      run_id (N,), pearson / fisher_z [/ partial] (N, R, R) float32
    manifest.parquet            the store manifest's rows of these runs (labels included)

Each ROI is averaged over its voxels inside the run's brain mask; an ROI with no such voxel gets a zero
time series and zero connectivity (a warning names how many).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.covariance import LedoitWolf
from tqdm.auto import tqdm

from neurostorm.data.atlases import Atlas, load_atlas
from neurostorm.data.files import replaced_atomically, write_json_atomic, write_npz_atomic, write_parquet_atomic
from neurostorm.data.parallel import TaskRunner
from neurostorm.data.qc import plot_connectome
from neurostorm.data.store import Store


def roi_weights(atlas: Atlas, mask: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Averaging matrix (V, R) restricted to ``mask`` (flattened grid), and which ROIs are empty."""
    flat_mask = mask.ravel()
    rows, cols, vals = [], [], []
    empty = np.zeros(len(atlas.voxels), dtype=bool)
    for r, voxels in enumerate(atlas.voxels):
        inside = voxels[flat_mask[voxels]]
        empty[r] = inside.size == 0
        rows.append(inside)
        cols.append(np.full(inside.size, r))
        vals.append(np.full(inside.size, 1.0 / max(inside.size, 1), dtype=np.float32))
    weights = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                shape=(flat_mask.size, len(atlas.voxels)))
    return weights, empty


def pearson_fc(timeseries: np.ndarray) -> np.ndarray:
    """(T, R) → (R, R) Pearson correlation; constant ROIs get 0 off the diagonal, 1 on it."""
    centred = timeseries - timeseries.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    safe = np.where(norms > 0, norms, 1.0)
    corr = (centred.T @ centred) / np.outer(safe, safe)
    corr[norms == 0, :] = 0.0
    corr[:, norms == 0] = 0.0
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def fisher_z(corr: np.ndarray) -> np.ndarray:
    """arctanh of a correlation matrix, diagonal 0."""
    z = np.arctanh(np.clip(corr, -0.999999, 0.999999))
    np.fill_diagonal(z, 0.0)
    return z


def partial_fc(timeseries: np.ndarray) -> np.ndarray:
    """(T, R) → (R, R) partial correlation from the Ledoit-Wolf shrunk precision matrix; diagonal 1."""
    std = timeseries.std(axis=0)
    standardised = (timeseries - timeseries.mean(axis=0)) / np.where(std > 0, std, 1.0)
    precision = LedoitWolf().fit(standardised).precision_
    d = np.sqrt(np.diag(precision))
    partial = -precision / np.outer(d, d)
    np.fill_diagonal(partial, 1.0)
    return partial


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with replaced_atomically(path) as tmp, open(tmp, "wb") as handle:  # a handle: numpy adds no ".npy"
        np.save(handle, array)


def _run_rois(store_location: str, run_id: str, atlas: Atlas, partial: bool, out: Path
              ) -> tuple[dict[str, np.ndarray], int]:
    """One run's ROI time series (saved to ``out/timeseries``), its FC matrices and its empty ROI count."""
    store = Store(store_location)
    weights, empty = roi_weights(atlas, store.read_mask(run_id))
    blocks = [weights.T @ block.reshape(len(block), -1).T for block in store.iter_frames(run_id)]
    timeseries = np.concatenate(blocks, axis=1).T.astype(np.float32)  # (T, R)
    _save_npy_atomic(out / "timeseries" / f"{run_id}.npy", timeseries)
    corr = pearson_fc(timeseries.astype(np.float64))
    matrices = {"pearson": corr, "fisher_z": fisher_z(corr)}
    if partial:
        matrices["partial"] = partial_fc(timeseries.astype(np.float64))
    return matrices, int(empty.sum())


def extract_rois(store_location: str, atlas_name: str, out: str | Path, partial: bool = False,
                 labels: str | None = None, progress: bool = True, workers: int = 1,
                 dask: str | None = None) -> dict:
    """Write ROI time series and FC for every run of the store; returns a summary dict.

    Runs go to ``workers`` local processes or to the Dask cluster ``dask`` (see :mod:`neurostorm.data.parallel`).
    """
    store = Store(store_location)
    atlas = load_atlas(atlas_name, store.grid, labels)
    out = Path(out)
    run_ids = store.manifest["run_id"].tolist()
    with TaskRunner(workers, dask) as runner:  # a cluster that cannot be reached fails before any write
        (out / "timeseries").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "atlas.json", {"name": atlas.name, "source": atlas.source, "names": atlas.names})
        with replaced_atomically(out / "rois.tsv") as tmp:
            atlas.table().to_csv(tmp, sep="\t", index=False)
        per_run: list[dict[str, np.ndarray]] = [{} for _ in run_ids]
        empty_counts = [0] * len(run_ids)
        tasks = [(store.location, run_id, atlas, partial, out) for run_id in run_ids]
        for index, (matrices, empty) in tqdm(runner.run(_run_rois, tasks), total=len(tasks), desc="roi", unit="run",
                                             disable=not progress):
            per_run[index], empty_counts[index] = matrices, empty
    if any(empty_counts):
        warnings.warn(f"{sum(1 for c in empty_counts if c)} runs have ROIs outside their brain mask "
                      f"(up to {max(empty_counts)} of {len(atlas.names)}); those ROIs are set to zero", stacklevel=2)
    kinds = ["pearson", "fisher_z", *(["partial"] if partial else [])]
    stacked = {kind: np.stack([m[kind] for m in per_run]).astype(np.float32) for kind in kinds}
    write_npz_atomic(out / "fc.npz", {"run_id": np.asarray(run_ids), **stacked})
    write_parquet_atomic(out / "manifest.parquet", store.manifest)
    mean_z = stacked["fisher_z"].mean(axis=0)
    plot_connectome(mean_z, f"{atlas.name}: mean Fisher-z FC over {len(run_ids)} runs", out / "fc_mean.png")
    summary = {"atlas": atlas.name, "atlas_argument": str(atlas_name), "n_rois": len(atlas.names),
               "n_runs": len(run_ids), "store": store.location, "kinds": kinds}
    write_json_atomic(out / "summary.json", summary)
    return summary


def rois_of_store(store_location: str, atlas_name: str, out: str | Path, progress: bool = False) -> Path:
    """The ROI folder of a store at ``out``: reused when it was made from the same store and atlas (written
    last, ``summary.json`` marks a complete folder), extracted otherwise."""
    out = Path(out)
    summary = out / "summary.json"
    if summary.exists():
        made = json.loads(summary.read_text())
        if made.get("store") == Store(store_location).location and made.get("atlas_argument") == str(atlas_name):
            return out
    extract_rois(store_location, atlas_name, out, progress=progress)
    return out
