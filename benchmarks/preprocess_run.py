"""Preprocessing cost of one long run, and int8 against float16 storage.

Writes a synthetic HCP-length run (default 1200 frames, TR 0.72 s) on the FSL MNI152 2 mm grid as
.nii.gz, streaming frame by frame, then preprocesses it in a child process for each storage type and prints
wall time, peak RSS of the child, store size and reconstruction error.

    python -m benchmarks.preprocess_run [--frames 1200] [--workdir /tmp/ns-bench]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

FSL_2MM = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
FSL_SHAPE = (91, 109, 91)


def write_long_run(path: Path, n_frames: int, tr: float, seed: int = 0) -> None:
    """Stream a whole-brain int16 run to ``path`` without holding it in memory."""
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
    header["pixdim"][4] = tr
    header.set_data_offset(352)
    rng = np.random.default_rng(seed)
    slow = rng.standard_normal(brain.sum()).astype(np.float32)
    with gzip.open(path, "wb", compresslevel=1) as handle:
        header.write_to(handle)
        handle.write(b"\x00" * (352 - handle.tell()))
        for t in range(n_frames):
            frame = np.zeros(FSL_SHAPE, np.int16)
            values = 1000 + 15 * slow * np.sin(t / 20) + 10 * rng.standard_normal(brain.sum())
            frame[brain] = values.astype(np.int16)
            handle.write(frame.tobytes(order="F"))


def run_child(source: Path, store: Path, storage: str) -> dict:
    code = (
        "from neurostorm.data.preprocess import PreprocessConfig, preprocess\n"
        f"r = preprocess([{str(source)!r}], {str(store)!r}, PreprocessConfig(storage={storage!r}), progress=False)\n"
        "assert not r.failures, r.failures\n"
        "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"  # KiB on Linux
    )
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_mib = int(child.stdout.split()[-1]) / 1024
    size = sum(p.stat().st_size for p in (store / "runs").rglob("*") if p.is_file())
    import pandas as pd

    row = pd.read_parquet(store / "manifest.parquet").iloc[0]
    from neurostorm.data.store import Store

    reader = Store(store)
    start = time.perf_counter()
    for begin in range(0, int(row["n_frames"]) - 20, 97):
        reader.read_clip(row["run_id"], begin, 20)
    clip_ms = 1000 * (time.perf_counter() - start) / len(range(0, int(row["n_frames"]) - 20, 97))
    return {"storage": storage, "seconds": round(seconds, 1), "peak_rss_mib": round(peak_mib),
            "n_frames": int(row["n_frames"]), "store_mib": round(size / 2**20, 1),
            "mib_per_frame": round(size / 2**20 / int(row["n_frames"]), 3),
            "rmse_z": float(row["quantization_rmse"]), "clip_read_ms": round(clip_ms, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--tr", type=float, default=0.72)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/neurostorm-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / "sub-bench_task-rest_bold.nii.gz"
    start = time.perf_counter()
    write_long_run(source, args.frames, args.tr)
    print(f"wrote {source} ({source.stat().st_size / 2**20:.0f} MiB, {args.frames} frames) "
          f"in {time.perf_counter() - start:.0f} s")
    results = []
    for storage in ("int8", "float16"):
        store = args.workdir / f"store-{storage}"
        subprocess.run(["rm", "-rf", str(store)], check=True)
        results.append(run_child(source, store, storage))
    print(f"{'storage':8s} {'frames':>6s} {'time s':>7s} {'peak MiB':>8s} {'store MiB':>9s} {'MiB/frame':>9s} "
          f"{'RMSE (z)':>9s} {'clip ms':>7s}")
    for r in results:
        print(f"{r['storage']:8s} {r['n_frames']:6d} {r['seconds']:7.1f} {r['peak_rss_mib']:8d} {r['store_mib']:9.1f} "
              f"{r['mib_per_frame']:9.3f} {r['rmse_z']:9.4f} {r['clip_read_ms']:7.1f}")
    (args.workdir / "preprocess_run.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
