"""The small cohort the gallery's examples run on, made once and reused (as nilearn's fetchers cache)."""

from __future__ import annotations

from pathlib import Path

from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.simulate import CohortConfig, simulate_cohort

EXAMPLE_COHORT = CohortConfig(subjects=12, n_frames=24, voxel_mm=4.0, seed=0)


def example_cohort(folder: str | Path = "neurostorm-examples") -> tuple[Path, Path]:
    """``(bids, store)``: :data:`EXAMPLE_COHORT` simulated into ``folder/bids`` (12 subjects at three sites
    with age, sex, diagnosis and a score in ``participants.tsv``, a resting run of 24 frames each, TR 2 s,
    4 mm voxels) and preprocessed onto the 4 mm grid into ``folder/store``. Made on the first call (about
    20 s on 2 cores); later calls find it done (preprocessing resumes where an interrupted call stopped)."""
    folder = Path(folder)
    bids, store = folder / "bids", folder / "store"
    if not (bids / "participants.tsv").exists():
        simulate_cohort(bids, EXAMPLE_COHORT)
    result = preprocess([bids], store, PreprocessConfig(grid="mni152-fsl-4mm-48"), workers=2, progress=False)
    if result.failures:
        raise RuntimeError(f"the example cohort could not be preprocessed: {result.failures}")
    return bids, store
