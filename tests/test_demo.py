"""The README's first command: ``neurostorm demo --quick`` end to end on the simulated cohort."""

import json
import re

import pandas as pd

from neurostorm.cli import main
from neurostorm.workflows.compare import Method
from neurostorm.workflows.demo import FAMILIES, SIZES, leave_site_out_study


def test_quick_demo_writes_a_report_with_every_family(tmp_path, capsys):
    out = tmp_path / "demo"  # the README's first command on 6 subjects (2 per site) instead of 16
    assert main(["demo", "--quick", "--subjects", "6", "--out", str(out)]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["families"]) == [family for family, _, _ in FAMILIES]
    labelled = pd.read_csv(out / "bids" / "participants.tsv", sep="\t")
    assert metrics["cv_folds"] == SIZES["quick"].cv_folds
    for family, result in metrics["families"].items():
        assert f"## {family}" in report
        tested = [m for m in result["methods"] if m.get("seconds")]  # cross-validated: every subject tested once
        assert tested and all(m["test_subjects"] == len(labelled) for m in tested), family
        ran = [m for m in result["methods"] if not m["note"]]
        assert [m["method"] for m in result["methods"]] == list(SIZES["quick"].methods)
        assert all(m["trainable_parameters"] > 0 and m["seconds"] > 0 for m in ran), family
    assert metrics["pretrain"]["val_loss"] < metrics["pretrain"]["val_loss_mean_predictor"]
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):  # every figure the report shows exists
        assert (out / image).stat().st_size > 10_000, image
    assert "| total |" in report and "FC + linear" in report
    page = (out / "report.html").read_text()  # the same report for a browser, its figures inside
    shown = len(re.findall(r"!\[[^\]]*\]\(", report))
    assert page.count("<img src=\"data:image/png;base64,") == shown and "not found" not in page


def test_leave_site_out_study_sets_each_method_beside_its_combat_twin(realistic_store, tmp_path):
    overrides = [f"data.stores=[{realistic_store}]", "task.label=sex", "data.atlas=dosenbach160",
                 "model.overrides={embed_dim: 8}", "trainer.progress=false"]
    study = leave_site_out_study(overrides, [Method.parse("fc-linear", "FC + linear"),
                                             Method.parse("neurostorm-tiny:probe", "linear probe")], tmp_path)
    assert study["site"] == "site3"
    assert study["table"]["method"].tolist() == ["FC + linear", "linear probe", "FC + linear + ComBat",
                                                 "linear probe + ComBat"]
    assert (study["table"]["test_subjects"] == 4).all() and "site=site3" in study["table"]
    combat = json.loads((tmp_path / "combat" / "runs" / "FC-linear" / "metrics.json").read_text())
    assert combat["task"]["harmonization"]["sites_by_own_estimates"] == ["site3"]
