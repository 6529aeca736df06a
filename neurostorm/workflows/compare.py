"""Several methods on one task under one protocol: the same subject split, the same ROI folder, the same
metrics with 95 % CIs over subjects. ``neurostorm compare`` and the demo report build their tables here.

A method is written ``MODEL[@INIT][:MODE[+HOW]]``: ``neurostorm-tiny`` (from scratch, full fine-tuning),
``neurostorm-tiny@runs/pretrain/model:prompt``, ``fc-linear``, ``bnt``; a probe's ``+HOW`` is a head over
each clip's tokens (``probe+attention``, ``probe+mlp``) or a run-level pooling (``probe+cov``,
``probe+clip_attention``). Each runs as an ordinary fine-tuning
run in OUT/runs/<label> (its ``config.yaml`` reruns it alone); OUT/task.yaml is the task as run with its
methods, so ``neurostorm compare --task OUT/task.yaml --out OUT`` reruns the whole table. OUT/table.md,
OUT/table.csv and OUT/comparison.png hold the results, OUT/report.md and OUT/report.html (self-contained) show
them with the paired differences and the commands.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tqdm.auto import tqdm

from neurostorm.data.files import write_csv_atomic
from neurostorm.data.html import write_markdown_report
from neurostorm.data.splits import FEW_TEST_SUBJECTS
from neurostorm.errors import InputError
from neurostorm.evaluation.run_report import interval
from neurostorm.evaluation.scores import UNDEFINED, paired_difference
from neurostorm.models import model_input
from neurostorm.tasks import task_family
from neurostorm.train.config import MODES, POOLINGS, PROBES, ExperimentConfig, read_config_file, save_config
from neurostorm.workflows.finetune import finetune
from neurostorm.workflows.random_splits import check_random_splits, score_random_splits


@dataclass(frozen=True)
class Method:
    label: str
    model: str
    init: str = "scratch"
    mode: str = "full"
    pooling: str = "mean"
    probe: str = "linear"

    @classmethod
    def parse(cls, spec: str, label: str | None = None) -> Method:
        """``MODEL[@INIT][:MODE[+HOW]]`` (MODE one of full, prompt, lora, probe; HOW of a probe a head over
        tokens, attention or mlp, or a run-level pooling, mean_std, cov or clip_attention)."""
        last = spec.rsplit(":", 1)[-1]
        mode, _, how = last.partition("+")
        if mode not in MODES or (how and (mode != "probe" or how not in (*POOLINGS, *PROBES))):
            mode, how, head = "full", "", spec
        else:
            head = spec.rpartition(":")[0]
        model, _, init = head.partition("@")
        model_input(model)  # refuses an unknown name
        pooling, probe = (how, "linear") if how in POOLINGS else ("mean", how or "linear")
        return cls(label or spec, model, init or "scratch", mode, pooling, probe)

    @property
    def spec(self) -> str:
        """The ``MODEL[@INIT][:MODE[+HOW]]`` text that parses back to this method."""
        how = self.pooling if self.pooling != "mean" else self.probe if self.probe != "linear" else ""
        return self.model + (f"@{self.init}" if self.init != "scratch" else "") + \
            (f":{self.mode}" if self.mode != "full" else "") + (f"+{how}" if how else "")

    def applies_to(self, kind: str, harmonize: str = "none") -> bool:
        family = task_family(kind)
        run_level = self.pooling != "mean"  # one row per run: subject labels only
        token_head = self.probe != "linear"  # a head over each clip's tokens: the families that train heads
        harmonizable = family.reads_fixed_features(self.model, self.mode) and self.pooling != "clip_attention" \
            and not token_head
        return family.model_applies(self.model, self.mode) and (not run_level or family.subject_labels) \
            and (not token_head or family.trains_head_on_clips(self.model, "full")) \
            and (harmonize == "none" or harmonizable)

    def configure(self, config: ExperimentConfig) -> ExperimentConfig:
        """The comparison's configuration for this method; ``head_standardise`` only where the method trains a
        head on an encoder of clips."""
        model = dataclasses.replace(config.model, name=self.model, init=self.init)
        standardise = config.head_standardise and task_family(config.task.kind).trains_head_on_clips(self.model,
                                                                                                    self.mode)
        return dataclasses.replace(config, model=model, mode=self.mode, pooling=self.pooling, probe=self.probe,
                                   head_standardise=standardise)


def run_folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")


def compare(config: ExperimentConfig, methods: list[Method], out: str | Path, progress: bool = True,
            random_splits: int = 0) -> pd.DataFrame:
    """Run every method on the task of ``config``; returns the table (one row per method). With
    ``random_splits`` N, the methods that learn from fixed features are also scored on N random subject
    splits (:mod:`neurostorm.workflows.random_splits`)."""
    out = Path(out)
    data = dataclasses.replace(config.data, split_file=config.data.split_file or str(out / "split.json"),
                               roi_dir=config.data.roi_dir or str(out / f"roi-{run_folder_name(config.data.atlas)}"))
    config = dataclasses.replace(config, data=data)
    if random_splits:
        check_random_splits(config, task_family(config.task.kind), random_splits)
    out.mkdir(parents=True, exist_ok=True)
    entries = [m.spec if m.label == m.spec else {m.label: m.spec} for m in methods]  # a label where it differs
    save_config(config, out / "task.yaml", {"compare": {"methods": entries}})
    kind, rows = config.task.kind, []
    metric_names = task_family(kind).metrics
    bar = tqdm(methods, desc=f"compare {kind}", unit="method", disable=not progress)
    for method in bar:
        bar.set_postfix_str(method.label)
        row = {"method": method.label, "model": method.model, "init": method.init, "mode": method.mode}
        if not method.applies_to(kind, config.data.harmonize):
            harmonized = f" / data.harmonize={config.data.harmonize}" if method.applies_to(kind) else ""
            rows.append({**row, "note": f"not applicable to {kind} / mode {method.mode}{harmonized}"})
            continue
        folder = out / "runs" / run_folder_name(method.label)
        start = time.perf_counter()
        metrics = finetune(method.configure(config), folder)
        row.update(seconds=time.perf_counter() - start, run=str(folder),
                   command=f"neurostorm finetune --config {folder / 'config.yaml'} --out {folder}",
                   trainable_parameters=metrics["task"].get("trainable_parameters"),
                   test_subjects=metrics.get("n_subjects"), note=_run_note(metrics))
        for name in metric_names:
            value = metrics.get(name, UNDEFINED)  # e.g. AUROC without every class among the test subjects
            row.update({name: value["value"], f"{name}_ci_low": value["ci_low"], f"{name}_ci_high": value["ci_high"]})
            row[f"{name}_chance"] = metrics.get("chance", {}).get(name, 0.0 if name == "pearson_r" else np.nan)
        for site, scores in metrics.get("per_site", {}).items():  # leave-site-out, cross-validation by site
            value = scores.get(metric_names[0], UNDEFINED)
            row.update({f"site={site}": value["value"], f"site={site}_ci_low": value["ci_low"],
                        f"site={site}_ci_high": value["ci_high"], f"site={site}_subjects": scores.get("n_subjects")})
        rows.append(row)
    table = pd.DataFrame(rows)
    if random_splits:
        table = score_random_splits(config, task_family(kind), table, out, random_splits)
    write_csv_atomic(out / "table.csv", table)
    (out / "table.md").write_text(markdown_table(table, kind) + "\n")
    plot_comparison(table, kind, out / "comparison.png")
    write_markdown_report(out, comparison_markdown(table, kind, out), f"neurostorm comparison: {kind}")
    return table


def comparison_markdown(table: pd.DataFrame, kind: str, out: Path) -> str:
    """OUT/report.md: the table, each method's paired difference from the reference (FC + linear where it
    ran, else the first method that ran), the figure and the commands that rerun the table and each row."""
    family = task_family(kind)
    ran = [r["method"] for r in table.to_dict("records") if isinstance(r.get("run"), str)]
    fc = [r["method"] for r in table.to_dict("records") if r["method"] in ran and r["model"] == "fc-linear"]
    reference = (fc or ran or [None])[0]
    differences = paired_differences(table, kind, [(m, reference) for m in ran if m != reference])
    lines = [f"# Comparison: {kind} — {family.headline}", "",
             "Every method ran on the same subject split; each value is the test-set metric with its 95 % "
             "bootstrap CI over test subjects.", "", markdown_table(table, kind), "", "![comparison](comparison.png)",
             ""]
    if differences:
        lines += [f"## Paired differences from {reference} ({family.headline}, same test subjects)", "",
                  "| method − reference | difference [95 % CI] |", "|---|---|"]
        lines += [f"| {d['a']} − {d['b']} | {interval(d, signed=True)} |" for d in differences] + [""]
    lines += ["## Run it again", "", f"The table: `neurostorm compare --task {out / 'task.yaml'} --out {out}`", ""]
    lines += [f"- {r['method']}: `{r['command']}`" for r in table.to_dict("records")
              if isinstance(r.get("command"), str)]
    return "\n".join(lines) + "\n"


def _run_note(metrics: dict) -> str:
    """What a reader of the table must know about a run: runs it skipped, decisions of one class only."""
    skipped = metrics["task"].get("skipped_runs") or []
    notes = [f"{len(skipped)} runs shorter than one clip skipped"] if skipped else []
    return "; ".join(notes + ([metrics["note"]] if metrics.get("note") else []))


def paired_differences(table: pd.DataFrame, kind: str, pairs: list[tuple[str, str]]) -> list[dict]:
    """For each (A, B) of method labels that both ran: A's headline metric minus B's on the same test
    subjects, with its paired-bootstrap 95 % CI; none for a family whose test rows are not paired by subject
    (retrieval: each query is ranked among its own fold's)."""
    family = task_family(kind)
    if family.target is None:
        return []
    metric, runs = family.headline, {r["method"]: r.get("run") for r in table.to_dict("records")}
    differences = []
    for a, b in pairs:
        if not (isinstance(runs.get(a), str) and isinstance(runs.get(b), str)):
            continue
        frames = [pd.read_csv(Path(runs[m]) / family.predictions, dtype={"subject": str}) for m in (a, b)]
        n_classes = json.loads((Path(runs[a]) / "metrics.json").read_text())["task"].get("n_classes", 1)
        differences.append({"a": a, "b": b, "metric": metric,
                            **paired_difference(family.target, n_classes, frames[0], frames[1], metric)})
    return differences


def markdown_table(table: pd.DataFrame, kind: str) -> str:
    """One line per method: each metric as value [95 % CI], chance of the headline metric, test subjects,
    trained parameters, seconds, then the headline metric of each test site where runs report sites, and its
    mean ± sd over random splits where the comparison ran them; a warning line under the table when the test
    subjects are few."""
    metrics = task_family(kind).metrics
    sites = [c for c in table.columns if c.startswith("site=") and not c.endswith(("_ci_low", "_ci_high", "_subjects"))]
    spread = f"{metrics[0]}_random_mean"
    extra = [f" {metrics[0]} at {c[5:]} |" for c in sites]
    if spread in table:
        extra.append(f" {metrics[0]} over {int(table['random_splits'].max())} random splits (mean ± sd) |")
    lines = ["| method | " + " | ".join(f"{m} [95 % CI]" for m in metrics) + f" | chance ({metrics[0]}) | "
             "test subjects | trained parameters | seconds |" + "".join(extra),
             "|---" * (len(metrics) + 5 + len(extra)) + "|"]
    notes = []
    for row in table.to_dict("records"):
        if pd.isna(row.get("seconds", np.nan)):  # the method did not run: its note says why
            lines.append(f"| {row['method']} | " + " | ".join("—" for _ in metrics) + f" | | | | {row['note']} |"
                         + " |" * len(extra))
            continue
        if row.get("note"):
            notes.append(f"- {row['method']}: {row['note']}")
        cells = [_interval_cell(row, m) for m in metrics]
        site_cells = "".join(f" {_interval_cell(row, c)} (n={_count(row.get(f'{c}_subjects'))}) |" for c in sites)
        if spread in table:
            mean, sd = row.get(spread, np.nan), row.get(f"{metrics[0]}_random_sd", np.nan)
            site_cells += " — |" if pd.isna(mean) else f" {mean:.3f} ± {sd:.3f} |"
        chance = row[f"{metrics[0]}_chance"]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {'' if pd.isna(chance) else f'{chance:.3f}'}"
                     f" | {_count(row.get('test_subjects'))} | {int(row['trainable_parameters'] or 0):,} | "
                     f"{row['seconds']:.0f} |" + site_cells)
    lines += ["", *notes] if notes else []
    tested = [int(n) for n in table.get("test_subjects", pd.Series(dtype=float)).dropna()]
    if tested and min(tested) < FEW_TEST_SUBJECTS:
        lines += ["", f"**Warning: {min(tested)} test subjects.** 95 % CIs over fewer than {FEW_TEST_SUBJECTS} "
                      "subjects are too wide to rank methods; use more subjects or data.cv_folds=k."]
    return "\n".join(lines)


def _interval_cell(row: dict, column: str) -> str:
    """``value [ci_low, ci_high]`` of a metric column of a table row, or — where it is undefined."""
    value = row.get(column, np.nan)
    if pd.isna(value):
        return "—"
    return f"{value:.3f} [{row[f'{column}_ci_low']:.3f}, {row[f'{column}_ci_high']:.3f}]"


def _count(value) -> str:
    return "" if value is None or pd.isna(value) else f"{int(value)}"


def plot_comparison(table: pd.DataFrame, kind: str, path: Path) -> Path:
    """The headline metric of each method with its 95 % CI, chance as a dashed line."""
    metric = task_family(kind).headline
    done = table[table[metric].notna()] if metric in table else table.iloc[:0]  # methods that ran
    fig = Figure(figsize=(max(5.0, 1.1 * len(done) + 2), 4))
    ax = fig.subplots()
    if len(done):
        values = done[metric].to_numpy(float)
        errors = np.abs(np.stack([values - done[f"{metric}_ci_low"].to_numpy(float),
                                  done[f"{metric}_ci_high"].to_numpy(float) - values]))
        noted = done["note"].fillna("").astype(bool).to_numpy() if "note" in done else np.zeros(len(done), bool)
        bars = ax.bar(range(len(done)), values, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
        for bar, has_note in zip(bars, noted, strict=True):
            if has_note:  # e.g. decided as one class: drawn, and marked as read with its note
                bar.set(hatch="//", facecolor="white", edgecolor="tab:blue")
        names = [f"{name} *" if has_note else name for name, has_note in zip(done["method"], noted, strict=True)]
        ax.set_xticks(range(len(done)), names, rotation=20, ha="right")
        chance = done[f"{metric}_chance"].dropna()
        if len(chance):
            ax.axhline(float(chance.iloc[0]), color="grey", ls="--", lw=1, label="chance")
        handles = ax.get_legend_handles_labels()[0]
        if noted.any():
            handles.append(Patch(hatch="//", facecolor="white", edgecolor="tab:blue",
                                 label="* read with its note (table.md)"))
        if handles:
            ax.legend(handles=handles, fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no method gave a {metric.replace('_', ' ')}: see the notes in table.md",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{kind.replace('_', ' ')}: {metric.replace('_', ' ')}\nwith 95 % CI", fontsize=10)  # fits 2 bars
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def parse_methods(specs: str) -> list[Method]:
    try:
        methods = [Method.parse(s.strip()) for s in specs.split(",") if s.strip()]
    except ValueError as err:
        raise InputError("--models", str(err)) from None
    if not methods:
        raise InputError("--models", "give at least one model")
    return methods


def saved_methods(task_file: str | Path) -> list[Method]:
    """The methods a comparison's ``task.yaml`` lists (``compare: methods: [spec | {label: spec}, ...]``)."""
    entries = read_config_file(task_file).get("compare", {}).get("methods", [])
    pairs = [next(iter(e.items())) if isinstance(e, dict) else (e, e) for e in entries]
    methods = [Method.parse(spec, label) for label, spec in pairs]
    if not methods:
        raise InputError(task_file, "lists no methods (compare: methods:); give --models")
    return methods
