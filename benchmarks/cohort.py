"""``python -m benchmarks.cohort [--runs 50000] [--parts 5000] [--workdir DIR]``: a store of 50,000 runs.

The store holds four real runs (simulated, preprocessed onto the 4 mm grid: 1,198 frames each at TR 0.8 s,
the length of a 16-minute session) and ``--runs`` manifest rows, each a real run's record under its own run
and subject id, source path and checksum, with labels (sex, age, site, diagnosis) drawn at random; each
``runs/<run_id>.zarr`` is a symbolic link to one of the four. The last ``--parts`` runs are written as
manifest parts (as array jobs leave them), the others folded into ``manifest.parquet``.

Measured, each in a fresh process (its peak RSS its own), in the order of a cohort's life: opening the
store while the parts are pending (store.json, manifest.parquet and every part); ``neurostorm store merge``;
then, on the merged store, opening it, a stratified subject split, and the pretraining data module's
start-up with one epoch's clip order (``PretrainClips``: it must open no run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import record, rss_mib, run_child

TARGET_S, TARGET_MIB = 5.0, 1024.0


def build(folder: Path, n_runs: int, n_parts: int) -> Path:
    """The benchmark store in ``folder/store`` (reused when it is there with as many runs)."""
    from neurostorm.data.files import write_parquet_atomic
    from neurostorm.data.manifest import manifest_row, write_part
    from neurostorm.data.preprocess import PreprocessConfig, preprocess
    from neurostorm.data.simulate import CohortConfig, simulate_cohort

    location = folder / "store"
    if (location / f"built-{n_runs}-{n_parts}").exists():
        return location
    simulate_cohort(folder / "bids", CohortConfig(subjects=4, n_frames=480, tr=2.0, voxel_mm=4.0, seed=5))
    preprocess([folder / "bids"], location, PreprocessConfig(grid="mni152-fsl-4mm-48"), progress=False)
    real = pd.read_parquet(location / "manifest.parquet").to_dict("records")
    (location / "manifest.parquet").unlink()
    rng = np.random.default_rng(0)
    rows = list(real)  # the four real runs, then rows that point at them
    for index in range(len(real), n_runs):
        source = real[index % len(real)]
        subject = f"{index // 2:06d}"  # two runs per subject
        run_id = f"sub-{subject}_task-rest_run-{index % 2 + 1}"
        link = location / "runs" / f"{run_id}.zarr"
        if not link.exists():
            os.symlink(location / "runs" / f"{source['run_id']}.zarr", link)
        rows.append({**source, "run_id": run_id, "subject": subject, "run": str(index % 2 + 1),
                     "path": f"runs/{run_id}.zarr", "source_path": f"/data/cohort/sub-{subject}/func/{run_id}_"
                     "space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
                     "source_sha256": f"{rng.integers(2**63):064x}",
                     "sex": "FM"[int(rng.integers(2))], "age": float(rng.uniform(8, 80)),
                     "site": f"site{int(rng.integers(20))}", "diagnosis": ["CN", "ADHD", "SZ"][int(rng.integers(3))]})
    folded = n_runs - n_parts
    write_parquet_atomic(location / "manifest.parquet", pd.DataFrame(rows[:folded]))
    for row in rows[folded:]:
        write_part(str(location), manifest_row({k: v for k, v in row.items() if k != "written_at"}, {}))
    (location / f"built-{n_runs}-{n_parts}").touch()
    return location


def open_store(location: str) -> dict:
    from neurostorm.data.store import Store

    baseline = rss_mib()
    start = time.perf_counter()
    n_runs = len(Store(location).manifest)
    return record("open store (store.json + manifest)", [n_runs], time.perf_counter() - start, baseline)


def split(location: str) -> dict:
    from neurostorm.data.splits import make_split
    from neurostorm.data.store import Store
    from neurostorm.train.data import subjects_table

    subjects = subjects_table(Store(location))
    baseline = rss_mib()
    start = time.perf_counter()
    made = make_split(subjects, (0.7, 0.15, 0.15), seed=0, stratify="diagnosis")
    return record("stratified subject split (diagnosis)", [len(subjects)], time.perf_counter() - start, baseline,
                  sizes=[len(made[k]) for k in ("train", "val", "test")])


def clip_index(location: str) -> dict:
    from neurostorm.data.store import Store
    from neurostorm.train.config import load_config
    from neurostorm.train.data import PretrainClips

    opened = []
    original = Store.run
    Store.run = lambda self, run_id: opened.append(run_id) or original(self, run_id)  # count runs opened
    config = load_config("tiny", [f"data.stores=[{location}]"])
    baseline = rss_mib()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        module = PretrainClips(config, Path(run_dir))
        epoch = sum(1 for _ in module.sampler)  # one epoch's clip order, drawn
    seconds = time.perf_counter() - start
    return record("pretraining data module + one epoch's order", [len(module.train_set)], seconds, baseline,
                  clips_per_epoch=epoch, runs_opened=len(opened))


def merge(location: str) -> dict:
    from neurostorm.data.manifest import merge_manifest

    baseline = rss_mib()
    start = time.perf_counter()
    merged = merge_manifest(location)
    return record("store merge (fold the parts)", [merged.runs], time.perf_counter() - start, baseline,
                  parts=merged.parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50_000)
    parser.add_argument("--parts", type=int, default=5_000, help="runs left as manifest parts (not merged)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the store is built (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.workdir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        location = str(build(folder, args.runs, args.parts))
        print(f"built {args.runs} runs ({args.parts} as parts) in {time.perf_counter() - start:.0f} s")
        results = [run_child("cohort", name, location) for name in ("open_store", "merge", "open_store", "split",
                                                                      "clip_index")]
        results[0]["name"] += f", {args.parts} parts pending"
    print(f"{'measurement':52s} {'runs/items':>10s} {'seconds':>8s} {'peak MiB':>9s}  target ≤ {TARGET_S:g} s, "
          f"≤ {TARGET_MIB:.0f} MiB")
    for r in results:
        if "error" in r:
            print(f"{r['name']:52s} failed: {r['error']}")
            continue
        met = r["seconds"] <= TARGET_S and r["peak_rss_mib"] <= TARGET_MIB
        extra = ", ".join(f"{k} {v}" for k, v in r.items() if k in ("sizes", "clips_per_epoch", "runs_opened", "parts"))
        print(f"{r['name']:52s} {r['shape'][0]:10d} {r['seconds']:8.2f} {r['peak_rss_mib']:9.0f}  "
              f"{'met' if met else 'MISSED'}{'; ' + extra if extra else ''}")


if __name__ == "__main__":
    main()
