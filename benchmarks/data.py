"""Data: preprocessing one long run, and reading clips from the store against what the encoder consumes.

A synthetic whole-brain int16 run on the FSL MNI152 2 mm grid (TR 0.72 s, like HCP) is streamed to
``.nii.gz``, then:

- preprocessed into a store (int8, the default, and float16), against a plain nilearn reslice of the same
  run onto the same grid (no masking, normalisation, TR resampling or storage): seconds and peak RSS;
- read back as base-size clips (96³ × 20 frames) in random order through a ``DataLoader`` with 2 workers,
  cold (the store's pages evicted from the page cache first) and warm; ``ratio`` = clips/s read over the
  clips/s the base encoder trains at (forward+backward, batch 1), measured by the encoder suite.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np

from benchmarks.common import median_seconds, record, rss_mib, run_child

FSL_2MM = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
FSL_SHAPE = (91, 109, 91)
TR = 0.72


def write_long_run(path: Path, n_frames: int, seed: int = 0) -> None:
    """Stream a whole-brain int16 run to ``path`` frame by frame, never holding it in memory."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask

    from neurostorm.data.grid import Grid, Reslicer

    grid = Grid("fsl", FSL_SHAPE, tuple(map(tuple, FSL_2MM)))
    mask_img = load_mni152_brain_mask(resolution=2)
    brain = Reslicer(mask_img.affine, mask_img.shape, grid, order=0)(np.asarray(mask_img.dataobj, np.float32)) > 0
    header = nib.Nifti1Header()
    header.set_data_shape((*FSL_SHAPE, n_frames))
    header.set_data_dtype(np.int16)
    header.set_qform(FSL_2MM, code=4)
    header.set_sform(FSL_2MM, code=4)
    header.set_xyzt_units("mm", "sec")
    header["pixdim"][4] = TR
    header.set_data_offset(352)
    rng = np.random.default_rng(seed)
    slow = rng.standard_normal(brain.sum()).astype(np.float32)
    with gzip.open(path, "wb", compresslevel=1) as handle:
        header.write_to(handle)
        handle.write(b"\x00" * (352 - handle.tell()))
        for t in range(n_frames):
            frame = np.zeros(FSL_SHAPE, np.int16)
            frame[brain] = (1000 + 15 * slow * np.sin(t / 20) + 10 * rng.standard_normal(brain.sum())).astype(np.int16)
            handle.write(frame.tobytes(order="F"))


def measure_preprocess(source: str, store: str, storage: str) -> dict:
    from neurostorm.data.preprocess import PreprocessConfig, preprocess
    from neurostorm.data.store import Store

    shutil.rmtree(store, ignore_errors=True)
    baseline = rss_mib()
    seconds = median_seconds(lambda: preprocess([source], store, PreprocessConfig(storage=storage), progress=False),
                             repeats=1, warmup=False)
    run = Store(store).manifest.iloc[0]
    size = sum(p.stat().st_size for p in Path(store).rglob("*") if p.is_file())
    return record(f"preprocess-{storage}", [int(run["n_frames"]), 96, 96, 96], seconds, baseline,
                  store_mib=size / 2**20, rmse_z=float(run["quantization_rmse"]))


def measure_reslice(source: str) -> dict:
    from nilearn.image import resample_img

    from neurostorm.data.grid import MNI152_FSL_2MM_96 as grid

    baseline = rss_mib()
    seconds = median_seconds(lambda: resample_img(source, target_affine=grid.affine, target_shape=grid.shape,
                                                  interpolation="continuous", force_resample=True,
                                                  copy_header=True).get_fdata(dtype=np.float32),
                             repeats=1, warmup=False)
    return record("reslice-nilearn", [*grid.shape], seconds, baseline)


def _evict(store: str) -> None:
    """Drop the store's files from the page cache, so the next read comes from disk."""
    for path in Path(store).rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure_reads(store: str, clips: int, workers: int) -> dict:
    import time

    import torch
    from torch.utils.data import DataLoader

    from neurostorm.data.datasets import ClipDataset

    dataset = ClipDataset(store, sequence_length=20, stride=1)  # every start; read in random order
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:clips].tolist()
    baseline = rss_mib()
    rates = {}
    for state in ("cold", "warm"):
        if state == "cold":
            _evict(store)
        loader = DataLoader(torch.utils.data.Subset(dataset, order), batch_size=1, num_workers=workers)
        start = time.perf_counter()
        for batch in loader:
            assert batch["x"].shape[-4:] == (96, 96, 96, 20)
        rates[state] = clips / (time.perf_counter() - start)
    return record(f"read-clips-{workers}workers", [clips, 1, 96, 96, 96, 20], clips / rates["warm"], baseline,
                  clips_per_s_cold=rates["cold"], clips_per_s_warm=rates["warm"])


def run(quick: bool, workdir: Path, encoder_clips_per_s: float | None) -> list[dict]:
    """Preprocessing against a plain reslice, then the store's read rate against the encoder's."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = str(workdir / "sub-bench_task-rest_bold.nii.gz")
    write_long_run(Path(source), 200 if quick else 1200)
    reslice = run_child("data", "measure_reslice", source)
    results = [reslice]
    for storage in ("int8", "float16"):
        row = run_child("data", "measure_preprocess", source, str(workdir / f"store-{storage}"), storage)
        results.append({**row, "ratio": row["seconds"] / reslice["seconds"],
                        "ratio_means": "times the seconds of a plain nilearn reslice"})
    reads = run_child("data", "measure_reads", str(workdir / "store-int8"), 32 if quick else 96, 2)
    if encoder_clips_per_s:
        reads = {**reads, "ratio": reads.get("clips_per_s_cold", float("nan")) / encoder_clips_per_s,
                 "ratio_means": "cold clips/s read / base encoder training clips/s"}
    return results + [reads]
