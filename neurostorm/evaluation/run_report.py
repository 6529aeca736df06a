"""A run folder's report: ``report.md`` for terminals and ``report.html`` (self-contained) for a browser.

Written at the end of ``finetune`` and ``pretrain`` from what the run folder holds: the test metrics with
their 95 % CIs and chance levels (per site where the run scored sites), the pretraining losses, every figure
of ``figures/`` (loss curves, ROC, confusion, predicted against true, rank histograms, …), the files beside
them and the command that runs it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from neurostorm.data.html import write_markdown_report

PRETRAINING_LOSSES = {"val_loss": "held-out masked reconstruction", "val_loss_mean_predictor":
                      "held-out, predicting each clip's mean (the bar to beat)", "train_loss_epoch": "training"}
FILES = {"predictions.csv": "test predictions, one row per scored clip or query",
         "metrics.json": "these values (and a fine-tuning run's task record)",
         "model": "the exported model (safetensors)", "split.json": "the subject split",
         "config.yaml": "every setting of the run", "logs": "training logs"}


def interval(value: dict, signed: bool = False) -> str:
    """``{value, ci_low, ci_high}`` as ``v [low, high]`` with three decimals (and a sign: a difference)."""
    form = "+.3f" if signed else ".3f"
    return f"{value['value']:{form}} [{value['ci_low']:{form}}, {value['ci_high']:{form}}]"


def _metric_rows(metrics: dict) -> list[str]:
    chance = metrics.get("chance", {})
    rows = [f"| {name} | {interval(value)} | {chance[name]:.3f} |" if name in chance else
            f"| {name} | {interval(value)} | |"
            for name, value in metrics.items() if isinstance(value, dict) and "ci_low" in value]
    return ["| metric | value [95 % CI] | chance |", "|---|---|---|", *rows] if rows else []


def _site_rows(per_site: dict) -> list[str]:
    names = sorted({name for scores in per_site.values() for name, v in scores.items()
                    if isinstance(v, dict) and "ci_low" in v})
    lines = ["| site | test subjects | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    return lines + [f"| {site} | {scores.get('n_subjects', '')} | "
                    + " | ".join(interval(scores[n]) if n in scores else "—" for n in names) + " |"
                    for site, scores in per_site.items()]


def figure_paragraph(folder: Path) -> str:
    """Every PNG of ``folder/figures`` as one Markdown paragraph of images (side by side where the screen
    allows), paths relative to ``folder``."""
    return " ".join(f"![{path.stem.replace('_', ' ')}]({path.relative_to(folder).as_posix()})"
                    for path in sorted((folder / "figures").glob("*.png")))


def _model(run_dir: Path) -> str:
    """``name`` (its initial weights) from the run's config.yaml, or ""."""
    path = run_dir / "config.yaml"
    model = (yaml.safe_load(path.read_text()) or {}).get("model", {}) if path.exists() else {}
    return f"`{model['name']}` ({model.get('init', 'scratch')}), " if model.get("name") else ""


def run_markdown(run_dir: Path, command: str) -> str:
    """The report of a fine-tuning or pretraining run folder as Markdown (images relative to the folder)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    task = metrics.get("task") or {}
    if task:
        counts = ", ".join(f"{metrics[k]} {k[2:]}" for k in ("n_subjects", "n_clips", "n_queries", "n_images")
                           if k in metrics)
        heading = f"# Fine-tuning run `{run_dir.name}`: {task.get('kind', '')}"
        about = (f"{_model(run_dir)}{task.get('kind', '')}, {task.get('mode', '')} mode"
                 + (f", label `{task['label']}`" if task.get("label") else "")
                 + (f", {task['folds']}-fold cross-validation" if task.get("folds") else "")
                 + f"; test set: {counts}. Intervals are 95 % bootstrap CIs over test subjects.")
    else:
        heading = f"# Pretraining run `{run_dir.name}`"
        about = (f"{_model(run_dir)}masked reconstruction (STORM) in {metrics.get('seconds', 0):.0f} s; losses of the "
                 "last epoch, held-out subjects beside the training ones.")
    lines = [heading, "", about, ""]
    losses = [f"| {what} | {metrics[key]:.4f} |" for key, what in PRETRAINING_LOSSES.items() if key in metrics]
    lines += ["| loss | value |", "|---|---|", *losses, ""] if losses else []
    if metrics.get("note"):
        lines += [f"Note: {metrics['note']}", ""]
    lines += _metric_rows(metrics) + [""]
    if metrics.get("per_site"):
        lines += ["## Per site", "", *_site_rows(metrics["per_site"]), ""]
    if list((run_dir / "figures").glob("*.png")):
        lines += ["## Figures", "", figure_paragraph(run_dir), ""]
    present = [f"- `{name}`: {what}" for name, what in FILES.items() if (run_dir / name).exists()]
    lines += ["## Files", "", *present, "", "## Run it again", "", f"`{command}`", ""]
    return "\n".join(lines)


def write_run_report(run_dir: Path, command: str) -> Path:
    """``run_dir/report.md`` and ``run_dir/report.html``; returns the HTML's path."""
    run_dir = Path(run_dir)
    title = f"neurostorm run {run_dir.name}"
    return write_markdown_report(run_dir, run_markdown(run_dir, command), title)
