"""The target voxel grid and affine-aware reslicing onto it.

Every input is resampled by its own affine onto one fixed grid, so orientation (RAS, LAS, ...) and voxel
size of the input never matter: only world (MNI) coordinates do.

The default grid is the FSL MNI152 2 mm grid (91×109×91, x axis pointing left, i.e. LAS voxel order,
origin (90, -126, -72)) that the NeuroSTORM weights were trained on, centre-cropped/padded to 96³:
2 voxels padded before and 3 after in x and z, 6 voxels cropped before and 7 after in y.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Grid:
    """A 3D voxel grid in world (mm) space: ``shape`` voxels, ``affine`` voxel → world (4×4)."""

    name: str
    shape: tuple[int, int, int]
    affine_rows: tuple[tuple[float, ...], ...]  # 4×4 as nested tuples so the dataclass stays hashable

    @property
    def affine(self) -> np.ndarray:
        return np.array(self.affine_rows, dtype=np.float64)

    @property
    def axcodes(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "affine": self.affine.tolist()}


MNI152_FSL_2MM_96 = Grid(
    name="mni152-fsl-2mm-96",
    shape=(96, 96, 96),
    affine_rows=((-2.0, 0.0, 0.0, 94.0), (0.0, 2.0, 0.0, -114.0), (0.0, 0.0, 2.0, -76.0), (0.0, 0.0, 0.0, 1.0)),
)

# The same field of view at 4 mm: each voxel centre lies midway between 2×2×2 voxels of the 2 mm grid, so
# trilinear reslicing of 2 mm MNI data onto it is exactly their block average. For small CPU models.
MNI152_FSL_4MM_48 = Grid(
    name="mni152-fsl-4mm-48",
    shape=(48, 48, 48),
    affine_rows=((-4.0, 0.0, 0.0, 93.0), (0.0, 4.0, 0.0, -113.0), (0.0, 0.0, 4.0, -75.0), (0.0, 0.0, 0.0, 1.0)),
)

GRIDS = {grid.name: grid for grid in (MNI152_FSL_2MM_96, MNI152_FSL_4MM_48)}


class Reslicer:
    """Resample 3D frames from a source grid onto a target grid through their affines.

    Where the voxel-to-voxel map is a signed permutation with integer offsets (e.g. fMRIPrep's RAS 2 mm
    grid onto the FSL LAS 2 mm grid) frames are copied by index, exactly; otherwise trilinear
    interpolation (``order=1``) or nearest neighbour (``order=0``, for masks and labels). Voxels that fall
    outside the source field of view are 0.
    """

    def __init__(self, source_affine: np.ndarray, source_shape: tuple[int, ...], target: Grid, order: int = 1):
        self.source_shape = tuple(int(s) for s in source_shape[:3])
        self.target = target
        self.order = order
        # target voxel -> source voxel
        self.voxel_map = np.linalg.inv(np.asarray(source_affine, dtype=np.float64)) @ target.affine
        self._gather = self._index_gather()

    def _index_gather(self) -> tuple[np.ndarray, np.ndarray] | None:
        linear, offset = self.voxel_map[:3, :3], self.voxel_map[:3, 3]
        is_permutation = np.allclose(np.abs(linear).sum(0), 1) and np.allclose(np.abs(linear).sum(1), 1)
        if not (is_permutation and np.allclose(linear, np.round(linear), atol=1e-6)):
            return None
        if not np.allclose(offset, np.round(offset), atol=1e-3):
            return None
        grid = np.indices(self.target.shape).reshape(3, -1)  # (3, V_target)
        source_idx = np.round(linear) @ grid + np.round(offset)[:, None]
        inside = np.all((source_idx >= 0) & (source_idx < np.array(self.source_shape)[:, None]), axis=0)
        flat_source = np.ravel_multi_index(source_idx[:, inside].astype(np.int64), self.source_shape)
        return np.flatnonzero(inside), flat_source

    @property
    def exact(self) -> bool:
        """True when frames are copied by index (no interpolation)."""
        return self._gather is not None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """(X, Y, Z) source frame → target-grid frame (float32)."""
        if self._gather is not None:
            target_idx, source_idx = self._gather
            out = np.zeros(int(np.prod(self.target.shape)), dtype=np.float32)
            out[target_idx] = frame.reshape(-1)[source_idx]
            return out.reshape(self.target.shape)
        return ndimage.affine_transform(
            np.asarray(frame, dtype=np.float32),
            self.voxel_map[:3, :3],
            offset=self.voxel_map[:3, 3],
            output_shape=self.target.shape,
            order=self.order,
            mode="constant",
            cval=0.0,
        )


@lru_cache(maxsize=4)
def template_brain_mask(grid: Grid = MNI152_FSL_2MM_96) -> np.ndarray:
    """nilearn's MNI152 (ICBM 2009) brain mask on ``grid`` (bool, ``grid.shape``), from package data."""
    from nilearn.datasets import load_mni152_brain_mask

    mask_img = load_mni152_brain_mask(resolution=2)
    reslice = Reslicer(mask_img.affine, mask_img.shape, grid, order=0)
    return reslice(np.asarray(mask_img.dataobj, dtype=np.float32)) > 0.5
