"""Reslicing by affine: orientation never decides where a voxel lands, world coordinates do."""

import nibabel as nib
import numpy as np
import pytest

from neurostorm.data.grid import MNI152_FSL_2MM_96, Reslicer, template_brain_mask
from neurostorm.data.simulate import output_grid

TARGET = MNI152_FSL_2MM_96


def marker_volume(orientation: str, voxel_mm: float, world_mm=(-40.0, -20.0, 10.0)) -> tuple[np.ndarray, np.ndarray]:
    """A volume on an MNI grid that is 1 inside a 6 mm cube around ``world_mm`` (left hemisphere)."""
    grid = output_grid(voxel_mm, orientation)
    world = nib.affines.apply_affine(grid.affine, np.indices(grid.shape).reshape(3, -1).T)
    inside = np.all(np.abs(world - np.asarray(world_mm)) <= 6.0, axis=1)
    return inside.reshape(grid.shape).astype(np.float32), grid.affine


def centroid_mm(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(volume > 0.5).mean(axis=0))


def test_target_grid_is_fsl_mni_las_cropped_to_96():
    assert TARGET.shape == (96, 96, 96)
    assert TARGET.axcodes == "LAS"
    # FSL 91×109×91 voxel (45, 63, 36) is MNI (0, 0, 0); on our grid it sits at (47, 57, 38)
    np.testing.assert_allclose(nib.affines.apply_affine(TARGET.affine, [47, 57, 38]), [0, 0, 0])


@pytest.mark.parametrize("orientation", ["RAS", "LAS"])
def test_fmriprep_2mm_grid_is_copied_exactly_and_keeps_left_left(orientation):
    volume, affine = marker_volume(orientation, 2.0)
    reslice = Reslicer(affine, volume.shape, TARGET)
    assert reslice.exact  # integer voxel map: no interpolation
    out = reslice(volume)
    assert out.sum() == volume.sum()
    np.testing.assert_allclose(centroid_mm(out, TARGET.affine), [-40, -20, 10], atol=1e-6)


def test_ras_and_las_inputs_give_identical_frames():
    ras, ras_affine = marker_volume("RAS", 3.0)
    las, las_affine = marker_volume("LAS", 3.0)
    assert np.array_equal(ras, las[::-1])  # the same brain, stored flipped
    out_ras = Reslicer(ras_affine, ras.shape, TARGET)(ras)
    out_las = Reslicer(las_affine, las.shape, TARGET)(las)
    np.testing.assert_allclose(out_ras, out_las, atol=1e-5)
    np.testing.assert_allclose(centroid_mm(out_ras, TARGET.affine), [-40, -20, 10], atol=1.0)


def test_flipping_the_array_without_the_affine_moves_the_marker_to_the_other_hemisphere():
    ras, affine = marker_volume("RAS", 2.0)
    out = Reslicer(affine, ras.shape, TARGET)(ras[::-1].copy())
    assert centroid_mm(out, TARGET.affine)[0] > 30  # right hemisphere: the affine, not the array order, rules


def test_template_mask_is_a_brain_on_the_grid():
    mask = template_brain_mask(TARGET)
    assert mask.shape == TARGET.shape
    volume_ml = mask.sum() * 8 / 1000
    assert 1300 < volume_ml < 2300  # an adult brain (incl. cerebellum) in millilitres
    centre = centroid_mm(mask.astype(float), TARGET.affine)
    assert abs(centre[0]) < 3
