"""Run-level pooling of a frozen encoder: mean_std, cov and attention for probe, embed, compare and sklearn."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from neurostorm import build_model
from neurostorm.cli import main
from neurostorm.data.store import Store
from neurostorm.models.linear import fit_linear
from neurostorm.train.pooling import RunPooling, RunSeries, fit_attention, run_series
from neurostorm.workflows.compare import Method


def series_of(frames_per_run, clips_per_run=None):
    series = RunSeries()
    for i, frames in enumerate(frames_per_run):
        clips = clips_per_run[i] if clips_per_run is not None else frames[:2]
        series.add(f"run{i}", f"s{i}", frames, frames, clips)
    return series


def coupled_runs(rng, n, sign, frames=40):
    """Runs whose features 0 and 1 share a signal with the given sign; every mean and std is the same."""
    runs = []
    for _ in range(n):
        shared = rng.standard_normal(frames)
        x = rng.standard_normal((frames, 6))
        x[:, 0], x[:, 1] = shared + 0.3 * x[:, 0], sign * shared + 0.3 * x[:, 1]
        runs.append(((x - x.mean(0)) / x.std(0)).astype(np.float32))
    return runs


def test_cov_features_see_coupling_that_mean_and_std_cannot():
    rng = np.random.default_rng(0)
    runs = coupled_runs(rng, 20, +1) + coupled_runs(rng, 20, -1)
    y, groups = np.repeat([0, 1], 20), np.arange(40)
    train, test = series_of(runs[::2]), series_of(runs[1::2])
    scores = {}
    for pooling in ("mean_std", "cov"):
        features = RunPooling(pooling, components=4).fit(train)
        linear = fit_linear(features.transform(train), y[::2], groups[::2], "classification")
        scores[pooling] = linear.score(features.transform(test), y[1::2])
    assert scores["cov"] == 1.0 and scores["mean_std"] < 0.8, scores
    z = RunPooling("cov", components=4).fit(train).transform(test)
    assert z.shape == (20, 6) and np.isfinite(z).all()


def test_cov_is_shrunk_when_a_run_has_fewer_frames_than_components_and_pca_sees_training_runs_only():
    rng = np.random.default_rng(1)
    train = series_of([rng.standard_normal((30, 40)).astype(np.float32) for _ in range(4)])
    short = series_of([rng.standard_normal((5, 40)).astype(np.float32)])  # 5 frames, 16 components
    pooling = RunPooling("cov").fit(train)
    components = pooling.pca_.components_.copy()
    features = pooling.transform(short)
    assert features.shape == (1, 120) and np.isfinite(features).all()
    assert np.array_equal(pooling.pca_.components_, components)
    mean_std = RunPooling("mean_std").fit(RunSeries()).transform(short)
    np.testing.assert_allclose(mean_std[0], np.concatenate([short.frame_means[0].mean(0), short.frame_means[0].std(0)]),
                               rtol=1e-6)


def test_attention_pooling_learns_which_clip_carries_the_label():
    rng = np.random.default_rng(2)
    clips, y = [], []
    for i in range(60):  # five clips per run; only a clip whose feature 1 is high carries the label in feature 0
        c = rng.standard_normal((5, 4)).astype(np.float32)
        k = rng.integers(5)
        c[:, 1] = -2.0
        c[k, 1] = 2.0
        c[k, 0] = 3.0 * (1 if i % 2 else -1)
        clips.append(c)
        y.append(i % 2)
    series = series_of(clips, clips)
    half, val = series.select(range(40)), series.select(range(40, 60))
    model, fitted = fit_attention(half, np.array(y[:40]), val, np.array(y[40:]), False, 2)
    centre, spread = fitted["scaler"]
    with torch.no_grad():
        logits = [float(model((torch.from_numpy(c) - centre) / (spread + 1e-6))[0]) for c in val.clips]
    assert np.mean((np.array(logits) > 0) == np.array(y[40:])) >= 0.9


def test_a_run_shorter_than_one_clip_is_skipped_with_a_warning(labelled_store):
    store = Store(labelled_store)
    runs = store.manifest.head(2)[["run_id", "subject", "n_frames"]].copy()
    runs.loc[runs.index[0], "n_frames"] = 12  # as if it were shorter than a 20-frame clip
    encoder = build_model("neurostorm-tiny", embed_dim=8)
    with pytest.warns(UserWarning, match="fewer than one clip of 20: skipped"):
        series = run_series(encoder, store, runs, length=20)
    assert series.skipped == [runs.run_id.iloc[0]] and series.run_ids == [runs.run_id.iloc[1]]
    assert series.frames[0].shape == (20, 64) and series.clips[0].shape == (1, 64)


@pytest.mark.parametrize("pooling", ["mean_std", "cov", "clip_attention"])
def test_the_probe_pools_whole_runs(labelled_store, tmp_path, pooling):
    out = tmp_path / pooling
    assert main(["finetune", "--config", "tiny", "--out", str(out), "--quiet", f"data.stores=[{labelled_store}]",
                 "data.split_fractions=[0.5,0.1,0.4]", "task.label=sex", "mode=probe", f"pooling={pooling}",
                 "model.overrides={embed_dim: 8}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"]["pooling"] == pooling and metrics["task"]["skipped_runs"] == []
    assert metrics["n_subjects"] == 16 and np.isfinite(metrics["auroc"]["value"])
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 16 and (predictions["start"] == 0).all()  # one row per test run


def test_embed_writes_run_rows_and_compare_names_the_pooling(labelled_store, tmp_path, capsys):
    assert main(["embed", "--config", "tiny", f"data.stores=[{labelled_store}]", "pooling=mean_std",
                 "model.overrides={embed_dim: 8}", "--out", str(tmp_path / "emb"), "--quiet"]) == 0
    with np.load(tmp_path / "emb" / "embeddings.npz") as saved:
        assert saved["run_embedding"].shape == (40, 128) and len(saved["run_ids"]) == 40
    method = Method.parse("neurostorm-tiny@runs/pre/model:probe+cov")
    assert (method.mode, method.pooling, method.init) == ("probe", "cov", "runs/pre/model")
    assert Method.parse(method.spec) == method and Method.parse("fc-linear").pooling == "mean"
    assert main(["embed", "--config", "tiny", f"data.stores=[{labelled_store}]", "pooling=clip_attention",
                 "--out", str(tmp_path / "att")]) == 2
    assert "pooling=clip_attention is learned with a task head" in capsys.readouterr().err
    assert main(["finetune", "--config", "tiny", f"data.stores=[{labelled_store}]", "task.label=sex",
                 "pooling=cov", "--out", str(tmp_path / "full")]) == 2
    assert "use it with mode=probe" in capsys.readouterr().err


def test_the_scikit_learn_embedder_pools_runs_too(labelled_store, tmp_path):
    from neurostorm import save_pretrained
    from neurostorm.sklearn import NeuroSTORMEmbedder

    folder = save_pretrained(build_model("neurostorm-tiny", embed_dim=8), tmp_path / "m",
                             preprocessing=Store(labelled_store).preprocessing())
    images = sorted(str(p) for p in (labelled_store.parent / "bids").glob("sub-0*/func/*_bold.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embedder = NeuroSTORMEmbedder(model=str(folder), pooling="cov").fit(images)
        features = embedder.transform(images[:3])
    assert features.shape == (3, 120) and len(embedder.get_feature_names_out()) == 120
    assert NeuroSTORMEmbedder(model=str(folder), pooling="mean_std").fit().transform(images[:1]).shape == (1, 128)
