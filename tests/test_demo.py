"""The README's first command: ``neurostorm demo --quick`` end to end on the simulated cohort."""

import json
import re

from neurostorm.cli import main
from neurostorm.demo import FAMILIES, SIZES


def test_quick_demo_writes_a_report_with_every_family(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["families"]) == [family for family, _, _ in FAMILIES]
    for family, result in metrics["families"].items():
        assert f"## {family}" in report
        ran = [m for m in result["methods"] if not m["note"]]
        assert [m["method"] for m in result["methods"]] == list(SIZES["quick"].methods)
        assert all(m["trainable_parameters"] > 0 and m["seconds"] > 0 for m in ran), family
    assert metrics["pretrain"]["val_loss"] < metrics["pretrain"]["val_loss_mean_predictor"]
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):  # every figure the report shows exists
        assert (out / image).stat().st_size > 10_000, image
    assert "| total |" in report and "FC + linear" in report
