"""``python -m benchmarks.haxby [FOLDER]``: the README's task-state table on real BOLD (Haxby et al. 2001).

FOLDER holds ``slice_bold.nii.gz`` (one slice, 12 runs concatenated, TR 2.5 s), ``slice_mask.nii.gz`` and
``slice_attributes_literal.txt`` (condition and run of every volume); default ``tests/data/haxby2001``.
Per run: the volume labels become a BIDS ``events.tsv`` (written and read back), frames take the
condition of their event, clips of 1 and 4 volumes lie inside one block, masked voxels are z-scored within
the run; then logistic regression (C 0.1) is trained on 11 runs and tested on the twelfth, for every run.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from neurostorm.data.events import condition_clips, events_from_volume_labels, frame_conditions, read_events
from neurostorm.evaluation.task_state import clip_features, leave_one_run_out

HAXBY = Path(__file__).resolve().parent.parent / "tests" / "data" / "haxby2001"
TR = 2.5


def haxby_runs(folder: Path, scratch: Path) -> Iterator[tuple[int, pd.DataFrame, np.ndarray, np.ndarray]]:
    """(run, events read back from its events.tsv, z-scored masked frames (T, V), volume labels) per run."""
    attributes = pd.read_csv(folder / "slice_attributes_literal.txt", sep=" ", header=None, names=["label", "run"])
    bold = np.asarray(nib.load(folder / "slice_bold.nii.gz").dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(folder / "slice_mask.nii.gz").dataobj) > 0
    voxels = bold[mask].T  # (volumes, voxels)
    for run, rows in attributes.groupby("run"):
        path = scratch / f"sub-1_task-objects_run-{run + 1:02d}_events.tsv"
        events_from_volume_labels(rows["label"].tolist(), TR).to_csv(path, sep="\t", index=False)
        frames = voxels[rows.index]
        yield run, read_events(path), (frames - frames.mean(0)) / (frames.std(0) + 1e-6), rows["label"].to_numpy()


def decode(folder: Path, length: int) -> dict:
    """Leave-one-run-out decoding of the eight categories from clips of ``length`` volumes."""
    features, labels, runs = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for run, events, frames, _ in haxby_runs(folder, Path(scratch)):
            clips = condition_clips(frame_conditions(events, len(frames), TR), length)
            features.append(clip_features(frames, clips, length))
            labels += [c for _, c in clips]
            runs += [run] * len(clips)
    return leave_one_run_out(np.concatenate(features), np.asarray(labels), np.asarray(runs), c=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=HAXBY)
    folder = parser.parse_args().folder
    print("| clips | accuracy (95 % CI over clips) | clips scored | chance |")
    print("|---|---|---|---|")
    for length in (1, 4):
        result = decode(folder, length)
        accuracy = result["accuracy"]
        print(f"| {length} volume{'s' * (length > 1)} ({length * TR:g} s) | {accuracy['value']:.3f} "
              f"[{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}] | {sum(map(sum, result['confusion']))} | "
              f"{result['chance']:.3f} |")


if __name__ == "__main__":
    main()
