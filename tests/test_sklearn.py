"""The scikit-learn embedder: in-memory preprocessing identical to the store's, pipelines, estimator rules."""

import pickle

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from neurostorm import InputError, build_model, save_pretrained
from neurostorm.data.datasets import clip_tensor
from neurostorm.data.store import Store
from neurostorm.sklearn import NeuroSTORMEmbedder

SMALL = {"img_size": (48, 48, 48), "embed_dim": 8, "frames": 8}


@pytest.fixture(scope="module")
def model_folder(realistic_store, tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("embedder") / "model"
    return save_pretrained(build_model("neurostorm-tiny", **SMALL), folder,
                           preprocessing=Store(realistic_store).preprocessing())


def first_runs(realistic_store):
    """One resting run per subject: (paths, subjects, sex)."""
    bids = realistic_store.parent / "bids"
    participants = pd.read_csv(bids / "participants.tsv", sep="\t").set_index("participant_id")
    paths = sorted(bids.glob("sub-*/func/*run-1*_bold.nii.gz"))
    subjects = [p.name.split("_")[0] for p in paths]
    return [str(p) for p in paths], subjects, participants.loc[subjects, "sex"].to_numpy()


def test_embeddings_equal_those_of_the_preprocessed_store(realistic_store, model_folder):
    paths, _, _ = first_runs(realistic_store)
    embedder = NeuroSTORMEmbedder(model=str(model_folder), clip_frames=8, stride=8).fit()
    assert embedder.preprocessing_.grid == "mni152-fsl-4mm-48" and embedder.preprocessing_.tr == 0.8
    ours = embedder.transform(paths[:2])
    assert ours.shape == (2, 64) and ours.dtype == np.float32
    store = Store(realistic_store)
    encoder = embedder.encoder_
    for row, path in zip(ours, paths[:2], strict=True):
        run_id = store.manifest[store.manifest.source_path.str.endswith(path.split("/")[-1])].run_id.item()
        n = store.n_frames(run_id)
        with torch.no_grad():
            clips = torch.stack([clip_tensor(store, run_id, s, 8) for s in range(0, n - 7, 8)])
            expected = encoder.encode(clips).mean(0).numpy()
        np.testing.assert_allclose(row, expected, atol=1e-5, rtol=1e-4)
    image = nib.load(paths[0])  # a nibabel image in memory gives the same row as its file
    np.testing.assert_allclose(embedder.transform([image])[0], ours[0], atol=1e-6)


def test_the_embedder_is_a_pipeline_step_in_grouped_cross_validation(realistic_store, model_folder):
    paths, subjects, sex = first_runs(realistic_store)
    pipeline = make_pipeline(NeuroSTORMEmbedder(model=str(model_folder), clip_frames=8, stride=16),
                             LogisticRegression(max_iter=1000))
    scores = cross_val_score(pipeline, np.array(paths, dtype=object), sex, groups=subjects, cv=GroupKFold(3))
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_estimator_rules_clone_pickle_and_feature_names(realistic_store, model_folder):
    paths, _, _ = first_runs(realistic_store)
    embedder = NeuroSTORMEmbedder(model=str(model_folder), clip_frames=8)
    for check in (check_no_attributes_set_in_init, check_get_params_invariance, check_set_params,
                  check_parameters_default_constructible):
        check(type(embedder).__name__, embedder)
    fitted = embedder.fit()
    assert list(fitted.get_feature_names_out()[:2]) == ["neurostormembedder0", "neurostormembedder1"]
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.transform(paths[:1]), fitted.transform(paths[:1]))
    assert clone(fitted).get_params() == embedder.get_params() and not hasattr(clone(fitted), "encoder_")


def test_bad_images_are_refused_naming_them(realistic_store, model_folder, tmp_path):
    paths, _, _ = first_runs(realistic_store)
    embedder = NeuroSTORMEmbedder(model=str(model_folder), clip_frames=8).fit()
    source = nib.load(paths[0])
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj)[..., 0], source.affine), volume)
    with pytest.raises(InputError, match="volume.nii.gz: expected a 4D image"):
        embedder.transform([str(volume)])
    shifted = source.affine.copy()
    shifted[:3, 3] += 120.0  # the brain far outside the template
    elsewhere = tmp_path / "not_mni_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), shifted, source.header), elsewhere)
    with pytest.raises(InputError, match="not_mni_bold.nii.gz: does not look like whole-brain MNI152"):
        embedder.transform([str(elsewhere)])
    with pytest.raises(ValueError, match="clip_frames 6"):
        NeuroSTORMEmbedder(model=str(model_folder), clip_frames=6).fit()
