"""ComBat by site (data.harmonize=combat): the package's own fit, fitted on training rows only."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from neuroCombat import neuroCombat

from neurostorm.cli import main
from neurostorm.data.harmonize import ComBat, harmonize_splits


def site_data(rng, sites: list[str], n: int = 20, features: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a shared signal, each site adding its own shift and scale to every feature."""
    rows, labels = [], []
    for k, site in enumerate(sites):
        shift, scale = rng.normal(0, 2, features), rng.uniform(0.5, 3, features)
        rows.append(rng.normal(size=(n, features)) * scale + shift + k)
        labels += [site] * n
    return np.concatenate(rows), np.array(labels)


def test_training_rows_are_harmonised_as_neurocombat_does_and_site_effects_go():
    rng = np.random.default_rng(0)
    x, sites = site_data(rng, ["a", "b", "c"])
    with contextlib.redirect_stdout(io.StringIO()):
        expected = neuroCombat(x.T, pd.DataFrame({"site": sites}), "site")["data"].T
    combat = ComBat().fit(x, sites)
    harmonised = combat.transform(x, sites)
    np.testing.assert_allclose(harmonised, expected, rtol=0, atol=1e-10)

    def spread_of_site_means(rows):
        return np.stack([rows[sites == s].mean(0) for s in "abc"]).std(0).mean()

    assert spread_of_site_means(harmonised) < 0.2 * spread_of_site_means(x)


def test_no_test_site_statistics_reach_the_fit():
    rng = np.random.default_rng(1)
    train, train_sites = site_data(rng, ["a", "b"])
    test, test_sites = site_data(rng, ["a", "c"], n=6)
    features = {"train": train, "test": test}
    sites = {"train": train_sites, "test": test_sites}
    harmonised, summary = harmonize_splits(features, sites, fit_on=("train",))
    wild = {"train": train, "test": test * 50 + 1000}  # test rows of another world entirely
    harmonised_wild, _ = harmonize_splits(wild, sites, fit_on=("train",))
    np.testing.assert_array_equal(harmonised["train"], harmonised_wild["train"])  # the fit saw no test row
    assert summary["fitted_sites"] == ["a", "b"] and summary["sites_by_own_estimates"] == ["c"]

    combat = ComBat().fit(train, train_sites)
    seen = test_sites == "a"  # a seen site's test row is harmonised alone, by the training site's estimates
    one_by_one = np.concatenate([combat.transform(row[None], ["a"]) for row in test[seen]])
    np.testing.assert_allclose(one_by_one, harmonised["test"][seen], atol=1e-12)
    unseen = ~seen  # an unseen site: its own estimates, from its own rows only (no labels)
    alone = combat.transform(test[unseen], test_sites[unseen])
    np.testing.assert_allclose(alone, harmonised["test"][unseen], atol=1e-12)


def test_refusals_name_the_problem():
    rng = np.random.default_rng(2)
    x, sites = site_data(rng, ["a"], n=5)
    with pytest.raises(ValueError, match="≥ 2 training sites"):
        ComBat().fit(x, sites)
    x, sites = site_data(rng, ["a", "b"], n=5)
    combat = ComBat().fit(x, sites)
    with pytest.raises(ValueError, match="site 'z' was not among the training sites"):
        combat.transform(x[:1], ["z"])
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ComBat().fit(x, sites)


def finetune(store, out, *overrides) -> tuple[int, dict]:
    code = main(["finetune", "--config", "tiny", f"data.stores=[{store}]", "task.label=sex",
                 "model.overrides={embed_dim: 8}", "data.harmonize=combat", *overrides, "--out", str(out), "--quiet"])
    metrics = out / "metrics.json"
    return code, json.loads(metrics.read_text()) if metrics.exists() else {}


def test_leave_site_out_with_combat_for_fc_and_frozen_embeddings(realistic_store, tmp_path):
    for model in ("model.name=fc-linear", "mode=probe"):
        code, metrics = finetune(realistic_store, tmp_path / model, model, "data.test_sites=[site2]",
                                 "data.atlas=dosenbach160")
        assert code == 0
        assert metrics["task"]["harmonization"] == {
            "method": "combat", "package": "neuroCombat", "fitted_sites": ["site1", "site3"],
            "sites_by_own_estimates": ["site2"], "covariates": []}
        assert list(metrics["per_site"]) == ["site2"]


def test_harmonisation_is_refused_where_there_are_no_fixed_features(realistic_store, tmp_path, capsys):
    code, _ = finetune(realistic_store, tmp_path / "full", "mode=full")
    assert code == 2 and "ComBat harmonises fixed features by site" in capsys.readouterr().err
    assert not (tmp_path / "full").exists()
    code, _ = finetune(realistic_store, tmp_path / "att", "mode=probe", "pooling=clip_attention")
    assert code == 2 and "pooling=clip_attention" in capsys.readouterr().err
    assert main(["finetune", "--config", "tiny", f"data.stores=[{realistic_store}]", "task.label=sex",
                 "data.harmonize=hope", "--out", str(tmp_path / "x")]) == 2
    assert "data.harmonize must be one of none, combat" in capsys.readouterr().err


def test_compare_reports_each_test_site_beside_the_pooled_metrics(realistic_store, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--task", "tiny", "--models", "fc-linear,neurostorm-tiny", "task.label=sex",
                 f"data.stores=[{realistic_store}]", "data.cv_by_site=true", "data.harmonize=combat",
                 "data.atlas=dosenbach160", "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "table.csv")
    fc = table.set_index("method").loc["fc-linear"]
    assert fc["test_subjects"] == 12 and all(fc[f"site=site{k}_subjects"] == 4 for k in (1, 2, 3))
    assert "not applicable to classification / mode full / data.harmonize=combat" in table["note"].iloc[1]
    header = (out / "table.md").read_text().splitlines()[0]
    assert header.endswith("| balanced_accuracy at site1 | balanced_accuracy at site2 | balanced_accuracy at site3 |")
