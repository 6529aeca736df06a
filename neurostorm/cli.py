"""The ``neurostorm`` command line: ``neurostorm SUBCOMMAND --help`` for each."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from neurostorm.data.grid import GRIDS
from neurostorm.errors import InputError, Interrupted
from neurostorm.version import __version__

# what a stopped command leaves, said in its one line
_RESUMABLE = "run it again with --resume to go on from the last finished epoch (checkpoints/last.ckpt)"
AFTER_A_STOP = {
    "preprocess": "the runs finished before it are complete in the store and none is partial; run the same "
                  "command again to go on",
    "roi": "the runs finished before it are complete; run the same command again to go on",
    "pretrain": _RESUMABLE,
    "finetune": _RESUMABLE,
}


SETTINGS_HELP = ("KEY=VALUE settings: mode=full|prompt|lora|probe, task.kind, task.label, data.stores=[STORE], "
                 "model.init=scratch|FOLDER|org/name|FILE.ckpt, optim.epochs, optim.lr, data.cv_folds, ...; "
                 "'neurostorm config --config tiny' prints every setting with its value")


def _tr(value: str) -> float | None:
    return None if value == "keep" else float(value)


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from neurostorm.data.ingest import parse_shard
    from neurostorm.data.preprocess import PreprocessConfig, preprocess

    try:
        shard = None if args.shard is None else parse_shard(args.shard)
    except ValueError as err:
        raise InputError("--shard", str(err)) from None
    chosen = {"tr": args.tr, "grid": args.grid, "normalization": args.normalization, "storage": args.storage,
              "fill_floor": args.fill_floor}
    if args.like:
        chosen.update(_preprocessing_of_model(args.like, chosen))
    try:
        config = PreprocessConfig(**chosen, input_tr=args.input_tr, min_frames=args.min_frames, non_mni=args.non_mni,
                                  codec=args.codec)
    except ValueError as err:
        raise InputError("neurostorm preprocess", str(err)) from None
    result = preprocess(args.inputs, args.out, config, workers=args.workers, labels=args.labels,
                        labels_policy=args.labels_policy, progress=not args.quiet,
                        participants=args.participant_label, sessions=args.session_label, tasks=args.task_label,
                        shard=shard, dask=args.dask)
    frames = sum(int(r["n_frames"]) for r in result.records)
    subjects = len({r["subject"] for r in result.records})
    print(f"store {args.out}: {len(result.records)} runs, {subjects} subjects, {frames} frames "
          f"({len(result.processed)} preprocessed, {len(result.skipped)} already done, "
          f"{len(result.failures)} failed)")
    if not args.no_report and result.records:
        from neurostorm.data.files import is_url

        if args.shard or is_url(args.out):  # the report of a whole store, written on a local disk
            print(f"report: `neurostorm report {args.out} --out DIR` writes the quality report"
                  f"{' once every shard is done' if args.shard else ''}")
        else:
            _store_report(args.out, Path(args.out) / "report", args.workers, args.dask)
    for failure in result.failures:
        print(f"neurostorm preprocess: {failure}", file=sys.stderr)
    return 1 if result.failures else 0


def _store_report(store: str, out: Path, workers: int, dask: str | None) -> None:
    from neurostorm.data.qc_report import flags_of, write_store_report

    index = write_store_report(store, out, workers=workers, dask=dask)
    runs = json.loads((out / "qc.json").read_text())
    named = [r["run_id"] for r in runs if flags_of(r)]
    print(f"report: {index} ({len(named)} of {len(runs)} runs flagged{': ' + ', '.join(named[:5]) if named else ''}"
          f"{' …' if len(named) > 5 else ''})")


def _cmd_report(args: argparse.Namespace) -> int:
    _store_report(args.store, Path(args.out), args.workers, args.dask)
    return 0


def _preprocessing_of_model(model: str, chosen: dict) -> dict:
    """The grid, TR, normalisation, fill floor and storage recorded with a model's weights; an option given on the
    command line that contradicts them is refused."""
    from neurostorm.data.preprocess import PreprocessConfig
    from neurostorm.models.weights import expected_preprocessing

    params = expected_preprocessing(model)
    if not params:
        raise InputError(model, "records no preprocessing to follow (weights saved outside a training run)")
    defaults = PreprocessConfig()
    clash = [f"--{k.replace('_', '-')} {chosen[k]} (the model's: {v})" for k, v in params.items()
             if chosen[k] != getattr(defaults, k) and chosen[k] != v]
    if clash:
        raise InputError(model, "--like contradicted by " + ", ".join(clash))
    print(f"preprocessing as {model}: " + ", ".join(f"{k} {v}" for k, v in sorted(params.items())))
    return params


def _cmd_roi(args: argparse.Namespace) -> int:
    from neurostorm.data.roi import extract_rois

    summary = extract_rois(args.store, args.atlas, args.out, partial=args.partial, labels=args.atlas_labels,
                           progress=not args.quiet, workers=args.workers, dask=args.dask)
    print(f"{args.out}: {summary['n_runs']} runs × {summary['n_rois']} ROIs of atlas {summary['atlas']} "
          f"(time series, Pearson and Fisher-z FC{', partial correlation' if args.partial else ''})")
    return 0


def _cmd_store(args: argparse.Namespace) -> int:
    from neurostorm.data.manifest import merge_manifest

    if args.action == "check":
        from neurostorm.data.integrity import check_store

        check = check_store(args.store, data=args.data)
        for line in check.problems:
            print(f"problem: {line}")
        for line in check.notes:
            print(f"note: {line}")
        print(f"{args.store}: {check.runs} runs checked{' (values re-read)' if args.data else ''}, "
              f"{len(check.problems)} problem(s)")
        return 0 if check.ok else 1
    merged = merge_manifest(args.store, wait_s=args.wait)
    if merged is None:
        raise InputError(args.store, f"another merge held manifest.lock for {args.wait:g} s; try again later")
    print(f"{args.store}/manifest.parquet: {merged.runs} runs ({merged.parts} parts folded"
          + (f", {len(merged.adopted)} complete run(s) without a row adopted" if merged.adopted else "") + ")")
    if args.action == "compact":
        from neurostorm.data.files import is_url
        from neurostorm.data.store import remove_stale_temporaries

        if not is_url(args.store):
            removed, kept = remove_stale_temporaries(Path(args.store))
            print(f"temporaries: {removed} stale removed, {kept} of live jobs kept")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from neurostorm.data.simulate import CohortConfig, simulate_cohort

    try:
        config = CohortConfig(subjects=args.subjects, runs=args.runs, n_frames=args.frames,
                              task_frames=args.task_frames, tr=args.tr, voxel_mm=args.voxel_mm,
                              orientation=args.orientation, sites=args.sites,
                              task_runs=args.task_runs, stimulus_runs=args.stimulus_runs, n_images=args.images,
                              contrast=args.contrast, dropout=args.dropout, seed=args.seed)
    except ValueError as err:
        raise InputError("--contrast/--dropout", str(err)) from None
    participants = simulate_cohort(args.out, config)
    print(f"{args.out}: {len(participants)} subjects at {args.sites} site(s); per subject {args.runs} resting, "
          f"{args.task_runs} task and {args.stimulus_runs} stimulus run(s); {args.frames} resting / "
          f"{args.task_frames or args.frames} task frames (TR {args.tr:g} s)")
    return 0


def _cmd_atlases(args: argparse.Namespace) -> int:
    from neurostorm.data.atlases import describe_atlases

    for line in describe_atlases():
        print(line)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from neurostorm.models.summary import describe, load_any

    try:
        model = load_any(args.model)
    except ValueError as err:
        raise InputError(args.model, str(err)) from err
    print(args.model)
    for line in describe(model):
        print(line)
    return 0


def load_experiment(source: str, overrides: list[str], quiet: bool):
    from neurostorm.train.config import load_config

    return load_config(source, [*overrides, *(["trainer.progress=false"] if quiet else [])])


def _experiment(args: argparse.Namespace):
    return load_experiment(args.config, args.overrides, args.quiet)


def _print_metrics(metrics: dict) -> None:
    """Each metric with its 95 % CI, the task family's headline first, then chance and any note."""
    from neurostorm.tasks import task_family

    kind = metrics.get("task", {}).get("kind")
    order = task_family(kind).metrics if kind else ()
    for name in [*(m for m in order if m in metrics), *(m for m in metrics if m not in order)]:
        value = metrics[name]
        if isinstance(value, dict) and "value" in value:
            print(f"  {name:18s} {value['value']:.3f}  95% CI [{value['ci_low']:.3f}, {value['ci_high']:.3f}]")
    if "chance" in metrics:
        print("  chance: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["chance"].items()))
    if metrics.get("note"):
        print(f"  note: {metrics['note']}")


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from neurostorm.train.config import config_as_plain

    print(yaml.safe_dump(config_as_plain(_experiment(args)), sort_keys=False), end="")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from neurostorm.train.run import pretrain

    summary = pretrain(_experiment(args), args.out, resume=args.resume)
    print(f"{args.out}: pretrained in {summary['seconds']:.0f} s; " + ", ".join(
        f"{k} {v:.4f}" for k, v in summary.items() if k != "seconds") + f"; weights in {args.out}/model")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from neurostorm.workflows.finetune import finetune

    metrics = finetune(_experiment(args), args.out, resume=args.resume)
    counts = ", ".join(f"{metrics[k]} {k[2:]}" for k in ("n_subjects", "n_clips", "n_queries", "n_images")
                       if k in metrics)
    print(f"{args.out}: test metrics ({metrics['task']['kind']}, {metrics['task']['mode']} mode; {counts})")
    _print_metrics(metrics)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from neurostorm.workflows.compare import compare, markdown_table, parse_methods, saved_methods
    from neurostorm.workflows.random_splits import parse_splits

    config = load_experiment(args.task, args.overrides, args.quiet)
    if args.splits and args.train_subjects:
        raise InputError("--splits", "random splits and --train-subjects each redraw the training subjects: "
                                     "use one")
    methods = parse_methods(args.models) if args.models else saved_methods(args.task)
    if args.train_subjects:
        from neurostorm.workflows.curves import curve_means, label_efficiency, parse_sizes

        curve = label_efficiency(config, methods, args.out, parse_sizes(args.train_subjects), args.repeats,
                                 progress=not args.quiet)
        metric, means = curve_means(curve)
        print(f"{args.out}/curve.png, curve.csv ({config.task.kind}, {metric}, mean over repeats):")
        print(means.round(3).to_string())
        for note in curve.loc[curve["method"].isna(), "note"]:
            print(f"  {note}")
        return 0
    table = compare(config, methods, args.out, progress=not args.quiet,
                    random_splits=parse_splits(args.splits) if args.splits else 0)
    print(f"{args.out}/table.md ({config.task.kind}):")
    print(markdown_table(table, config.task.kind))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from neurostorm.train.run import evaluate

    metrics = evaluate(args.run)
    print(f"{args.run}: test metrics over {metrics['n_subjects']} subjects, recomputed from the exported model")
    _print_metrics(metrics)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from neurostorm.train.run import embed

    path = embed(_experiment(args), args.out)
    print(f"{path}: clip and per-subject embeddings")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from neurostorm.train.run import predict

    table = predict(_experiment(args), args.out)
    print(f"{args.out}: predictions for {len(table)} subjects (predictions.csv per clip, subject_predictions.csv)")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from neurostorm.workflows.explain import explain

    run_config = Path(args.target) / "config.yaml"
    source = args.config or (str(run_config) if run_config.exists() else None)
    config = load_experiment(source, args.overrides, args.quiet) if source else None
    summary = explain(args.target, args.out, config, subjects=args.subjects, clips=args.clips, steps=args.steps,
                      atlas=args.atlas)
    print(f"{args.out}: integrated gradients over {len(summary['subjects'])} subjects, {summary['clips']} clips "
          f"({', '.join(summary['classes'])}); maps attribution_*.nii.gz, roi_attribution.csv, figures/")
    for row in summary["top_rois"][:5]:
        print(f"  {row['rank']:>2}. {row['name']:<24} mean |attribution| {row['mean_abs']:.3g}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from neurostorm.workflows.demo import run_demo

    report = run_demo(args.out, quick=args.quick, seed=args.seed, subjects=args.subjects, progress=not args.quiet)
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurostorm", description=__doc__.splitlines()[0] if __doc__ else None,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"neurostorm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, helptext: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=helptext, description=helptext,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        command.set_defaults(handler=handler)
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        return command

    pre = add("preprocess", "4D NIfTI / BIDS / fMRIPrep runs → normalised clips store", _cmd_preprocess)
    pre.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI files, folders or BIDS(-derivatives) folders")
    pre.add_argument("--out", required=True, metavar="STORE", help="store folder (created or resumed)")
    pre.add_argument("--workers", type=int, default=1, help="runs processed in parallel on this machine")
    pre.add_argument("--dask", default=None, metavar="local:N|ADDRESS",
                     help="run each run as a task on a Dask cluster: local:N worker processes or a scheduler address")
    pre.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                     help="only these participants (BIDS-App convention: 01 or sub-01)")
    pre.add_argument("--session-label", nargs="+", default=None, metavar="LABEL", help="only these sessions")
    pre.add_argument("--task-label", nargs="+", default=None, metavar="LABEL", help="only these tasks")
    pre.add_argument("--shard", default=None, metavar="I/N",
                     help="this job's share I of N (1 ≤ I ≤ N) of the selected runs, by a stable hash of the run id")
    pre.add_argument("--like", default=None, metavar="MODEL",
                     help="preprocess as the weights of MODEL (folder or Hub id) expect: its grid, TR, normalisation")
    pre.add_argument("--tr", type=_tr, default=0.8, help="target TR in seconds, or 'keep'")
    pre.add_argument("--input-tr", type=float, default=None, help="source TR in seconds when files lack it")
    pre.add_argument("--labels", default=None, metavar="CSV", help="labels per subject (else participants.tsv)")
    pre.add_argument("--labels-policy", choices=("strict", "lenient"), default="strict",
                     help="strict: unknown/missing subjects or empty values are errors; lenient: warnings")
    pre.add_argument("--grid", choices=sorted(GRIDS), default="mni152-fsl-2mm-96",
                     help="target grid: the 2 mm one of the released weights, or 4 mm (48³) for small CPU models")
    pre.add_argument("--normalization", choices=("zscore", "minmax"), default="zscore",
                     help="per-run normalisation over brain voxels and all frames")
    pre.add_argument("--fill-floor", type=float, default=None, metavar="Z",
                     help="bound the background fill and clip brain values at this z (e.g. -3); default: the "
                          "reference's fill, the run's minimum normalised brain value however low")
    pre.add_argument("--storage", choices=("int8", "float16"), default="int8",
                     help="stored value type (int8 uses a per-frame scale)")
    pre.add_argument("--codec", choices=("zstd", "lz4"), default="zstd",
                     help="compression of the stored frames: zstd is a quarter smaller, lz4 decodes 3 times "
                          "faster (fewer loader workers per GPU); a run already stored is not rewritten for it")
    pre.add_argument("--min-frames", type=int, default=20, help="refuse runs shorter than this (one clip)")
    pre.add_argument("--non-mni", choices=("error", "warn"), default="error",
                     help="what to do with data that does not look like whole-brain MNI152")
    pre.add_argument("--no-report", action="store_true",
                     help="skip the HTML quality report written to STORE/report at the end")

    rep = add("report", "HTML quality report of a store: a sortable table of runs with QC flags, a page per run",
              _cmd_report)
    rep.add_argument("store", metavar="STORE", help="a store folder or URL")
    rep.add_argument("--out", required=True, metavar="DIR", help="folder for index.html and runs/*.html")
    rep.add_argument("--workers", type=int, default=1, help="runs measured in parallel on this machine")
    rep.add_argument("--dask", default=None, metavar="local:N|ADDRESS",
                     help="measure each run as a task on a Dask cluster: local:N worker processes or a scheduler "
                          "address")

    roi = add("roi", "ROI time series and functional connectivity from a store", _cmd_roi)
    roi.add_argument("store", metavar="STORE", help="a store written by neurostorm preprocess")
    roi.add_argument("--atlas", required=True, help="atlas name (see 'neurostorm atlases') or a NIfTI label image")
    roi.add_argument("--atlas-labels", default=None, help="CSV/TSV of index,name for a NIfTI atlas")
    roi.add_argument("--out", required=True, metavar="DIR", help="output folder (time series, fc.npz, rois.tsv)")
    roi.add_argument("--partial", action="store_true", help="also partial correlation (Ledoit-Wolf)")
    roi.add_argument("--workers", type=int, default=1, help="runs processed in parallel on this machine")
    roi.add_argument("--dask", default=None, metavar="local:N|ADDRESS",
                     help="run each run as a task on a Dask cluster: local:N worker processes or a scheduler address")

    store = add("store", "check a store against its manifest, or fold manifest parts into manifest.parquet",
                _cmd_store)
    store.add_argument("action", choices=("check", "merge", "compact"),
                       help="check: every run as its manifest row says; merge: fold the manifest parts; "
                            "compact: merge and remove stale temporaries")
    store.add_argument("store", metavar="STORE", help="a store folder or URL")
    store.add_argument("--data", action="store_true", help="check: re-read every value against its checksum")
    store.add_argument("--wait", type=float, default=60.0, help="merge: seconds to wait for another merge")

    sim = add("simulate", "write a simulated fMRIPrep-style BIDS cohort on MNI152 anatomy", _cmd_simulate)
    sim.add_argument("--out", required=True, metavar="DIR", help="BIDS derivatives folder to write")
    sim.add_argument("--subjects", type=int, default=8, help="subjects (sex and diagnosis balanced over sites)")
    sim.add_argument("--runs", type=int, default=1, help="resting runs per subject")
    sim.add_argument("--task-runs", type=int, default=0, help="block-design runs (faces/houses/tools) with events")
    sim.add_argument("--stimulus-runs", type=int, default=0, help="image runs; embeddings in stimuli.npz")
    sim.add_argument("--images", type=int, default=12, help="images shown in a stimulus run")
    sim.add_argument("--sites", type=int, default=3, help="scanner sites (intensity, bias field, noise)")
    sim.add_argument("--frames", type=int, default=60, help="frames per resting run")
    sim.add_argument("--task-frames", type=int, default=None, help="frames per task / stimulus run; None: as --frames")
    sim.add_argument("--tr", type=float, default=2.0, help="seconds")
    sim.add_argument("--voxel-mm", type=float, default=2.0, help="voxel size of the written runs")
    sim.add_argument("--orientation", choices=("RAS", "LAS"), default="RAS",
                     help="voxel order: RAS as fMRIPrep writes, LAS as FSL")
    sim.add_argument("--contrast", type=float, default=0.4,
                     help="baseline intensity ∝ (1 − contrast) + contrast × grey-matter fraction (0 to <1)")
    sim.add_argument("--dropout", type=float, default=0.0,
                     help="susceptibility signal loss in orbitofrontal and temporal-pole voxels (0 to <1)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort)")

    add("atlases", "list the atlases available offline", _cmd_atlases)

    def add_run(name: str, helptext: str, handler: Callable[[argparse.Namespace], int], resumable: bool = True
                ) -> None:
        command = add(name, helptext, handler)
        command.epilog = SETTINGS_HELP
        command.add_argument("--config", required=True, help="YAML file, or a preset: tiny, base")
        command.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-4 data.batch_size=2")
        command.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created)")
        if resumable:
            command.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.ckpt")

    settings = add("config", "print the complete configuration of a preset or YAML file with overrides: every "
                   "KEY=VALUE setting there is, with its value", _cmd_config)
    settings.add_argument("--config", default="tiny", help="YAML file, or a preset: tiny, base")
    settings.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. mode=lora task.label=age")
    add_run("pretrain", "STORM masked pretraining over one or more stores", _cmd_pretrain)
    add_run("finetune", "adapt an encoder to a label, task state or retrieval: full fine-tuning (mode=full), "
            "prompt tuning (mode=prompt), LoRA (mode=lora) or a linear probe of the frozen encoder (mode=probe)",
            _cmd_finetune)
    add_run("embed", "pooled encoder embeddings of every clip of the configured stores", _cmd_embed, False)
    add_run("predict", "apply a fine-tuned model (model.init = its model folder) to a store", _cmd_predict, False)
    comp = add("compare", "several models on one task, one split: OUT/table.md, table.csv, comparison.png",
               _cmd_compare)
    comp.add_argument("--task", required=True, metavar="CONFIG", help="experiment YAML (task and data) or a preset")
    comp.add_argument("--models", default=None, help="comma-separated MODEL[@INIT][:MODE[+HOW]], e.g. "
                      "neurostorm-tiny@runs/pre/model,neurostorm-tiny:probe+attention,swift-tiny,bnt-tiny,fc-linear; "
                      "default: "
                      "the methods of a task.yaml written by compare")
    comp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.epochs=5 task.label=sex")
    comp.add_argument("--out", required=True, metavar="DIR", help="comparison folder (created)")
    comp.add_argument("--train-subjects", default=None, metavar="LIST",
                      help="label-efficiency curve: training sizes as counts or fractions, e.g. 4,8,16,all")
    comp.add_argument("--repeats", type=int, default=1, help="seeded subsamples of the training subjects per size")
    comp.add_argument("--splits", default=None, metavar="random:N",
                      help="also score the fixed-feature methods (probe, fc-linear) on N random subject splits")
    evaluate = add("evaluate", "recompute a fine-tuned run's test metrics from its exported model", _cmd_evaluate)
    evaluate.add_argument("run", metavar="RUN_DIR", help="folder of a neurostorm finetune run")

    expl = add("explain", "integrated-gradients brain maps of a fine-tuned model: NIfTI, ROI table, figures",
               _cmd_explain)
    expl.add_argument("target", metavar="RUN_OR_MODEL", help="a finetune run folder, or its model folder with --config")
    expl.add_argument("--config", default=None, help="YAML file or preset naming data.stores (default: the run's)")
    expl.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.stores=[STORE]")
    expl.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    expl.add_argument("--subjects", nargs="+", default=None, metavar="ID",
                      help="subjects to explain (default: the run's test subjects, else every subject)")
    expl.add_argument("--clips", type=int, default=4, help="clips per subject, spread over its runs")
    expl.add_argument("--steps", type=int, default=32, help="integration steps of integrated gradients")
    expl.add_argument("--atlas", default="power264", help="atlas of the ROI table (see neurostorm atlases)")

    demo = add("demo", "the whole method on a simulated cohort: simulate, preprocess, pretrain, adapt, report",
               _cmd_demo)
    demo.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (report.md, metrics.json)")
    demo.add_argument("--quick", action="store_true", help="a few minutes: fewer subjects and epochs")
    demo.add_argument("--subjects", type=int, default=None, help="simulated subjects; None: 16 with --quick, else 48")
    demo.add_argument("--seed", type=int, default=0, help="seed of the cohort, splits and training")

    info = add("info", "parameter counts (total and per stage) and input shape of a model", _cmd_info)
    info.add_argument("model", metavar="NAME", help="model name (e.g. neurostorm-base) or a pretrained folder")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, letting a command's list of words (KEY=VALUE overrides, input paths) go anywhere
    between the options: ``finetune --config tiny --out R optim.lr=1e-4`` as well as before ``--out``."""
    args, extra = parser.parse_known_args(argv)
    words = next((name for name in ("overrides", "inputs") if isinstance(getattr(args, name, None), list)), None)
    if extra and (words is None or any(word.startswith("-") for word in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, words).extend(extra)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    code = _run_command(args)
    if code > 128:
        # the I/O a stop abandons (zarr's event loop, its pending writes) is collected at exit; not a problem
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    return code


def _run_command(args: argparse.Namespace) -> int:
    """Run the parsed command: 0 (or its own code), 2 on bad input, 128 + the signal when stopped."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.simplefilter("ignore", DeprecationWarning)  # libraries' notices to their developers
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")  # Lightning on new torch
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        try:
            with _stopped_by_signals():
                return args.handler(args)
        except InputError as err:
            print(f"neurostorm {args.command}: {err}", file=sys.stderr)
            return 2
        except RuntimeError as err:
            if not str(err).startswith("DataLoader worker"):
                raise
            # PyTorch noticed a loader process gone (killed by the system for memory, most often)
            print(f"neurostorm {args.command}: {str(err).splitlines()[0]}; the data loader stopped: lower "
                  "data.num_workers or data.batch_size if the system ran out of memory, then run the same "
                  "command again", file=sys.stderr)
            return 1
        except (Interrupted, KeyboardInterrupt) as stop:
            name = stop.signal_name if isinstance(stop, Interrupted) else "SIGINT"
            after = AFTER_A_STOP.get(args.command, "its outputs are written whole or not at all")
            print(f"neurostorm {args.command}: stopped by {name}; {after}", file=sys.stderr)
            return 128 + signal.Signals[name].value


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """Ctrl-C (SIGINT) and a scheduler's SIGTERM raise :class:`Interrupted` in the main thread while a command
    runs, so either ends it with one line on stderr; the handlers before are put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
