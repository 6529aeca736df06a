"""``neurostorm demo``: the whole method on a simulated cohort, on one CPU, with a report.

simulate → preprocess (4 mm grid; one store each for resting, task and image runs) → STORM
pretraining of the tiny model on the resting runs → for every task family, one ``compare`` table:
training from scratch, full fine-tuning, prompt tuning and a linear probe of the pretrained encoder (per
clip, and with attention pooling over each run's clips for subject labels), an attentive probe over each
clip's tokens, and the FC + linear baseline → ``report.md`` (a table per family with 95 % CIs, paired
differences, figures, trained parameters, seconds, the command of every row) and ``metrics.json``. Every
step is an ordinary CLI run whose folder stays under OUT for inspection.

The quick demo cross-validates every family (3 folds, a site each) so every subject is tested once; the
default demo adds a label-efficiency curve and a leave-site-out table (with and without ComBat) for age.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from neurostorm.data.files import write_json_atomic
from neurostorm.data.html import write_markdown_report
from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.simulate import CohortConfig, simulate_cohort
from neurostorm.data.store import Store
from neurostorm.evaluation.run_report import interval
from neurostorm.tasks import task_family
from neurostorm.train.config import load_config
from neurostorm.train.run import pretrain
from neurostorm.workflows.compare import Method, compare, markdown_table, paired_differences
from neurostorm.workflows.curves import curve_means, label_efficiency


@dataclass(frozen=True)
class DemoSize:
    subjects: int
    frames: int  # per simulated resting run at TR 2 s
    task_frames: int  # per block-design and image run
    pretrain_epochs: int
    pretrain_clips: int  # per epoch
    epochs: int  # of every adaptation run
    methods: tuple[str, ...]  # compared per family, keys of METHODS
    cv_folds: int = 0  # k: every subject tested once, k folds (sites kept whole); 0: one split
    studies: bool = False  # a label-efficiency curve and a leave-site-out table (with and without ComBat)
    recipe: bool = False  # adapt with RECIPE (its passes over the training clips cost the quick demo its budget)


METHODS = {"scratch": "neurostorm-tiny", "full fine-tuning": "neurostorm-tiny@{pretrained}",
           "prompt tuning": "neurostorm-tiny@{pretrained}:prompt", "linear probe": "neurostorm-tiny@{pretrained}:probe",
           # the run-level pooling with the best validation score in benchmarks/pooling.py (subject labels only)
           "probe + attention pooling": "neurostorm-tiny@{pretrained}:probe+clip_attention",
           # a learned query over the last stage's tokens of each clip, its learning rate and weight decay chosen on
           # the validation subjects (benchmarks/frozen.py; families with a label head over clips only)
           "attentive probe": "neurostorm-tiny@{pretrained}:probe+attention",
           "FC + linear": "fc-linear"}
PAIRS = [("full fine-tuning", "scratch"), ("prompt tuning", "full fine-tuning"), ("full fine-tuning", "FC + linear"),
         ("probe + attention pooling", "FC + linear"), ("attentive probe", "linear probe")]
SIZES = {"quick": DemoSize(subjects=16, frames=24, task_frames=40, pretrain_epochs=2, pretrain_clips=32, epochs=1,
                           methods=("scratch", "full fine-tuning", "FC + linear"), cv_folds=3),
         "default": DemoSize(subjects=48, frames=24, task_frames=48, pretrain_epochs=3, pretrain_clips=200, epochs=2,
                             methods=tuple(METHODS), studies=True, recipe=True)}
# heads on standardised embeddings (scratch, full and prompt tuning); a pretrained encoder fully fine-tuned at
# the paper's rate, its head at the preset's (benchmarks/adaptation.py; measured for labels and task state)
RECIPE = ["head_standardise=true", "optim.pretrained_lr=5e-5"]
STUDY = ("age", ["task.label=age", "task.kind=regression"])  # the family of the label-efficiency and site studies
STUDY_METHODS = ("full fine-tuning", "linear probe", "FC + linear")
CURVE_SIZES, CURVE_REPEATS = [8, 16, None], 2  # labelled training subjects (None: all of the split's)

FAMILIES = [  # (family, store, task overrides)
    ("sex", "rest", ["task.label=sex"]),
    ("age", "rest", ["task.label=age", "task.kind=regression"]),
    ("phenotype (score)", "rest", ["task.label=score", "task.kind=regression"]),
    ("diagnosis (3 classes)", "rest", ["task.label=diagnosis", "task.class_weights=true"]),
    ("task state", "objects", ["task.kind=task_state", "data.sequence_length=8"]),
    ("image retrieval", "images", ["task.kind=image_retrieval", "data.sequence_length=4"]),
    ("re-identification", "rest", ["task.kind=reidentification", "data.sequence_length=8"]),
]
STORES = {"rest": "*_task-rest_*_bold.nii.gz", "objects": "*_task-objects_*_bold.nii.gz",
          "images": "*_task-images_*_bold.nii.gz"}


def _stage(name: str, stages: dict[str, float], start: float) -> None:
    stages[name] = time.perf_counter() - start
    print(f"demo: {name} done in {stages[name]:.0f} s", flush=True)


def demo_cohort(quick: bool = False, seed: int = 0, subjects: int | None = None) -> CohortConfig:
    """The simulated cohort of the quick or default demo: two resting runs, a block-design and an image run
    per subject, TR 2 s, 4 mm voxels, three sites."""
    size = SIZES["quick" if quick else "default"]
    return CohortConfig(subjects=subjects or size.subjects, runs=2, task_runs=1, stimulus_runs=1, n_images=8,
                        n_frames=size.frames, task_frames=size.task_frames, voxel_mm=4.0, seed=seed)


def preprocess_stores(bids: Path, out: Path, names: tuple[str, ...] = tuple(STORES)) -> dict[str, Path]:
    """The demo's runs of a simulated cohort in ``bids``, one store per kind of run (``names``, keys of
    STORES), preprocessed onto the 4 mm grid into OUT/store-<name>; returns the store of each name."""
    stores = {}
    for name in names:
        runs = sorted(bids.glob(f"sub-*/func/{STORES[name]}"))
        stores[name] = out / f"store-{name}"
        result = preprocess(runs, stores[name], PreprocessConfig(grid="mni152-fsl-4mm-48"), workers=2,
                            labels=bids / "participants.tsv", progress=False)
        if result.failures:  # the simulator writes valid runs: a failure here is a defect, never bad input
            raise RuntimeError(f"preprocessing the simulated {name} runs failed: {result.failures[0]}")
    return stores


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, subjects: int | None = None,
             progress: bool = True) -> Path:
    """Run everything into ``out``; returns the path of ``report.md`` (``metrics.json`` beside it). Without
    ``progress`` no progress bar is drawn (the line per finished stage stays)."""
    out = Path(out)
    size = SIZES["quick" if quick else "default"]
    cohort = demo_cohort(quick, seed, subjects)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    bids = out / "bids"
    simulate_cohort(bids, cohort)
    _stage("simulate", stages, start)
    start = time.perf_counter()
    preprocess_stores(bids, out)
    _stage("preprocess", stages, start)
    common = [f"trainer.seed={seed}", "data.split_fractions=[0.6,0.2,0.2]"]
    start = time.perf_counter()
    pretraining = [*common, "optim.lr=3e-3", f"optim.epochs={size.pretrain_epochs}",
                   f"data.stores=[{{path: {out / 'store-rest'}, max_clips: {size.pretrain_clips}}}]"]
    pretrain(load_config("tiny", [*pretraining, *([] if progress else ["trainer.progress=false"])]),
             out / "runs" / "pretrain")
    _stage("pretrain", stages, start)
    pretrained = out / "runs" / "pretrain" / "model"
    methods = [Method.parse(METHODS[label].format(pretrained=pretrained), label) for label in size.methods]
    recipe = RECIPE if size.recipe else []
    families = {}
    for family, store, task in FAMILIES:
        start = time.perf_counter()
        extra = [f"task.stimuli={bids / 'stimuli.npz'}"] if "image" in family else []
        folds = [f"data.cv_folds={size.cv_folds}"] if size.cv_folds else []
        labelled = task_family(load_config("tiny", task).task.kind).trains_head
        overrides = [*common, "trainer.progress=false", f"optim.epochs={size.epochs}", *(recipe if labelled else []),
                     f"data.stores=[{out / f'store-{store}'}]", f"data.roi_dir={out / f'roi-{store}'}", *task, *extra]
        folder = out / "families" / family.split(" (")[0].replace(" ", "-")
        config = load_config("tiny", [*overrides, *folds])
        table = compare(config, methods, folder, progress=progress)  # one progress bar per family
        kind = config.task.kind
        families[family] = {"kind": kind, "folder": str(folder), "table": table,
                            "differences": paired_differences(table, kind, PAIRS),
                            "command": f"neurostorm compare --task {folder / 'task.yaml'} --out {folder}"}
        _stage(family, stages, start)
    studies = {}
    if size.studies:
        study = [*common, "trainer.progress=false", f"optim.epochs={size.epochs}", *recipe,
                 f"data.stores=[{out / 'store-rest'}]", f"data.roi_dir={out / 'roi-rest'}", *STUDY[1]]
        chosen = [m for m in methods if m.label in STUDY_METHODS]
        start = time.perf_counter()
        studies["curve"] = label_efficiency_study(study, chosen, out / "studies" / "curve")
        _stage("label efficiency", stages, start)
        start = time.perf_counter()
        studies["sites"] = leave_site_out_study(study, [m for m in chosen if m.label != "full fine-tuning"],
                                                out / "studies" / "leave-site-out")
        _stage("leave-site-out", stages, start)
    pretrain_metrics = json.loads((out / "runs" / "pretrain" / "metrics.json").read_text())
    return write_report(out, cohort, families, stages, pretrain_metrics, "neurostorm " + shlex.join(
        ["pretrain", "--config", "tiny", *pretraining, "--out", str(out / "runs" / "pretrain")]), studies,
        size.cv_folds)


def label_efficiency_study(overrides: list[str], methods: list[Method], folder: Path) -> dict:
    """The study family's headline metric at 8, 16 and all labelled training subjects (2 draws each)."""
    sizes = ",".join("all" if n is None else str(n) for n in CURVE_SIZES)
    curve = label_efficiency(load_config("tiny", overrides), methods, folder, CURVE_SIZES, CURVE_REPEATS,
                             progress=False)
    metric, means = curve_means(curve)
    return {"metric": metric, "folder": str(folder), "means": means,
            "command": "neurostorm " + shlex.join(["compare", "--task", "tiny", "--models",
                                                   ",".join(m.spec for m in methods), *overrides, "--train-subjects",
                                                   sizes, "--repeats", str(CURVE_REPEATS), "--out", str(folder)])}


def leave_site_out_study(overrides: list[str], methods: list[Method], folder: Path) -> dict:
    """Train on every site but the last, test on it: each method as it is and with ComBat by site."""
    sites = sorted(Store(load_config("tiny", overrides).data.stores[0].path).manifest["site"].astype(str).unique())
    tables, commands = [], []
    for harmonize in ("none", "combat"):
        config = load_config("tiny", [*overrides, f"data.test_sites=[{sites[-1]}]", f"data.harmonize={harmonize}"])
        table = compare(config, methods, folder / harmonize, progress=False)
        if harmonize != "none":
            table["method"] = table["method"] + " + ComBat"
        tables.append(table)
        commands.append(f"neurostorm compare --task {folder / harmonize / 'task.yaml'} --out {folder / harmonize}")
    return {"site": sites[-1], "kind": config.task.kind, "table": pd.concat(tables, ignore_index=True),
            "commands": commands}


def write_report(out: Path, cohort: CohortConfig, families: dict, stages: dict[str, float], pretrain: dict,
                 pretrain_command: str, studies: dict, cv_folds: int = 0) -> Path:
    """``report.md`` (tables, differences, figures, commands, wall times) and ``metrics.json``."""
    protocol = (f"every family is cross-validated in {cv_folds} folds (subjects of a site kept together), so "
                "every subject is tested once and each value is computed on the pooled test predictions (for "
                "retrieval, the pooled queries, each ranked within its fold)" if cv_folds else
                "all methods of a family share one subject split")
    lines = ["# neurostorm demo report", "",
             f"Simulated cohort of {cohort.subjects} subjects (`bids/participants.tsv` holds the ground truth), "
             "tiny model, CPU. Every value is the test-set metric over held-out subjects with its 95 % bootstrap "
             f"CI (subjects resampled); {protocol}. Differences are paired: each bootstrap draw scores both "
             "methods on the same resampled subjects. Nothing here was tuned to favour pretraining.", "",
             "## Pretraining", "",
             f"Held-out masked reconstruction loss {pretrain.get('val_loss', float('nan')):.4f} against "
             f"{pretrain.get('val_loss_mean_predictor', float('nan')):.4f} for predicting each clip's mean.", "",
             "![pretraining loss curves](runs/pretrain/figures/loss_curves.png)", "", f"`{pretrain_command}`", ""]
    for family, result in families.items():
        kind, folder = result["kind"], Path(result["folder"])
        lines += [f"## {family} — {task_family(kind).headline}", "", markdown_table(result["table"], kind), ""]
        if result["differences"]:
            lines += ["Paired differences in " + task_family(kind).headline + " (95 % CI):", ""]
            lines += [f"- {d['a']} − {d['b']}: {interval(d, signed=True)}" for d in result["differences"]] + [""]
        lines += [f"![{family}]({folder.relative_to(out) / 'comparison.png'})", "",
                  "Commands (the table, then each row):", "", f"- `{result['command']}`"]
        lines += [f"- {r['method']}: `{r['command']}`" for r in result["table"].to_dict("records")
                  if isinstance(r.get("command"), str)] + [""]
    lines += _study_sections(out, studies)
    lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in stages.items()]
    lines += [f"| total | {sum(stages.values()):.0f} |"]
    path = out / "report.md"
    write_markdown_report(out, "\n".join(lines) + "\n", "neurostorm demo report")  # and report.html
    summary = {"cohort": {"subjects": cohort.subjects, "frames": cohort.n_frames, "seed": cohort.seed},
               "cv_folds": cv_folds,
               "pretrain": pretrain, "stages_seconds": stages,
               "families": {family: {"kind": r["kind"], "differences": r["differences"],
                                     "methods": _records(r["table"])} for family, r in families.items()}}
    if "curve" in studies:
        summary["label_efficiency"] = {"family": STUDY[0], "metric": studies["curve"]["metric"],
                                       "folder": studies["curve"]["folder"]}
    if "sites" in studies:
        summary["leave_site_out"] = {"family": STUDY[0], "test_site": studies["sites"]["site"],
                                     "methods": _records(studies["sites"]["table"])}
    write_json_atomic(out / "metrics.json", summary)
    return path


def _study_sections(out: Path, studies: dict) -> list[str]:
    """The label-efficiency curve and the leave-site-out table of the default demo, if they ran."""
    lines = []
    if "curve" in studies:
        curve, family = studies["curve"], STUDY[0]
        means = curve["means"]
        lines += [f"## Label efficiency — {family}, {curve['metric']} against labelled training subjects", "",
                  "The same validation and test subjects at every size; each size below all is drawn twice "
                  "(seeded). Mean over draws:", "",
                  "| training subjects | " + " | ".join(means.columns) + " |", "|---" * (len(means.columns) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for n, row in means.iterrows()]
        lines += ["", f"![label efficiency]({Path(curve['folder']).relative_to(out) / 'curve.png'})", "",
                  f"Per draw, with CIs: `{Path(curve['folder']).relative_to(out) / 'curve.csv'}`; paired differences: "
                  f"`{Path(curve['folder']).relative_to(out) / 'curve_differences.csv'}`.", "",
                  f"Command: `{curve['command']}`", ""]
    if "sites" in studies:
        sites = studies["sites"]
        lines += [f"## Leave-site-out — {STUDY[0]}, trained on the other sites, tested on {sites['site']}", "",
                  "ComBat by site (`data.harmonize=combat`) is fitted on the training subjects only; the unseen "
                  "test site is harmonised by its own estimates from its features, without labels.", "",
                  markdown_table(sites["table"], sites["kind"]), "", "Commands:", ""]
        lines += [f"- `{command}`" for command in sites["commands"]] + [""]
    return lines


def _records(table: pd.DataFrame) -> list[dict]:
    """Table rows with missing values as None (strict JSON)."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


__all__ = ["SIZES", "run_demo"]
