"""ROI extraction and connectivity: atlases by affine, shapes, and the FC maths."""

import nibabel as nib
import numpy as np
import pytest

from neurostorm.cli import main
from neurostorm.data.atlases import label_image_atlas, load_atlas
from neurostorm.data.grid import MNI152_FSL_2MM_96
from neurostorm.data.roi import fisher_z, partial_fc, pearson_fc
from neurostorm.data.simulate import output_grid
from neurostorm.errors import InputError


def test_roi_command_writes_timeseries_and_fc(store, tmp_path, capsys):
    out = tmp_path / "roi"
    assert main(["roi", str(store), "--atlas", "power264", "--out", str(out), "--partial", "--quiet"]) == 0
    assert "264 ROIs" in capsys.readouterr().out
    assert (out / "fc_mean.png").stat().st_size > 10_000
    assert len((out / "rois.tsv").read_text().splitlines()) == 265  # header + one row per ROI
    assert not [p.name for p in out.rglob(".*") if p.is_file()]  # every write renamed into place, none left
    fc = np.load(out / "fc.npz")
    n_runs = len(fc["run_id"])
    assert n_runs == 6 and fc["pearson"].shape == fc["fisher_z"].shape == fc["partial"].shape == (6, 264, 264)
    series = np.load(out / "timeseries" / f"{fc['run_id'][0]}.npy")
    assert series.shape == (58, 264)
    np.testing.assert_allclose(fc["pearson"][0], pearson_fc(series.astype(np.float64)), atol=1e-5)
    np.testing.assert_allclose(fc["pearson"][0], fc["pearson"][0].T, atol=1e-6)
    # simulated networks: ROIs of one network correlate more than ROIs of different networks
    assert np.nanmean(fc["fisher_z"]) > 0


def test_fc_maths():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(500)
    series = np.stack([shared + 0.1 * rng.standard_normal(500), shared + 0.1 * rng.standard_normal(500),
                       rng.standard_normal(500), np.zeros(500)], axis=1)
    corr = pearson_fc(series)
    assert corr[0, 1] > 0.95 and abs(corr[0, 2]) < 0.15
    assert corr[3, 3] == 1.0 and not corr[3, :3].any()  # a constant ROI correlates with nothing
    z = fisher_z(corr)
    assert z[0, 1] == pytest.approx(np.arctanh(corr[0, 1])) and not np.diag(z).any()
    # partial correlation removes an indirect link: a→b→c
    a = rng.standard_normal(5000)
    b = a + 0.5 * rng.standard_normal(5000)
    c = b + 0.5 * rng.standard_normal(5000)
    partial = partial_fc(np.stack([a, b, c], axis=1))
    assert abs(partial[0, 2]) < 0.1 < partial[0, 1]


def test_atlas_is_resampled_by_affine_not_index():
    """The same label image stored RAS and LAS at 3 mm gives the same ROI voxels on the target grid."""
    grid = output_grid(3.0, "RAS")
    world = nib.affines.apply_affine(grid.affine, np.indices(grid.shape).reshape(3, -1).T)
    labels = np.where(world[:, 0] < -10, 1, np.where(world[:, 0] > 10, 2, 0)).reshape(grid.shape)  # L=1, R=2
    ras = label_image_atlas("lr", "test", nib.Nifti1Image(labels.astype(np.int16), grid.affine), MNI152_FSL_2MM_96)
    las_grid = output_grid(3.0, "LAS")
    las = label_image_atlas("lr", "test", nib.Nifti1Image(labels[::-1].astype(np.int16), las_grid.affine),
                            MNI152_FSL_2MM_96)
    for left_ras, left_las in zip(ras.voxels, las.voxels, strict=True):
        assert np.array_equal(left_ras, left_las)
    assert ras.centroids_mm[0, 0] < 0 < ras.centroids_mm[1, 0]
    world_target = nib.affines.apply_affine(MNI152_FSL_2MM_96.affine,
                                            np.argwhere(np.ones(MNI152_FSL_2MM_96.shape))[ras.voxels[0]])
    assert (world_target[:, 0] < -8).all()  # ROI 1 is the left hemisphere on the LAS target grid


def test_packaged_volumetric_atlas_and_missing_ones():
    pytest.importorskip("nibabel")
    try:
        aal = load_atlas("aal", MNI152_FSL_2MM_96)
    except InputError as err:
        pytest.skip(str(err))
    assert len(aal.names) == 120 and aal.names[0] == "Precentral_L"
    assert all(len(v) > 0 for v in aal.voxels)
    with pytest.raises(InputError, match="Schaefer volumes cannot be obtained offline"):
        load_atlas("schaefer200", MNI152_FSL_2MM_96)
    with pytest.raises(InputError, match="unknown atlas"):
        load_atlas("nope", MNI152_FSL_2MM_96)
