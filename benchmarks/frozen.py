"""Frozen features of the tiny encoder read as the field's evaluations read them, beside FC + linear.

``python -m benchmarks.frozen [--subjects 48] [--splits 20] [--steps 400] [--out DIR]`` simulates the default
demo's cohort (48 subjects; resting runs for sex, age, phenotype score and diagnosis, block-design runs for
task state), preprocesses it, pretrains the tiny STORM model as the default demo does, and reads the
random-initialised and the pretrained encoder frozen:

- ``linear``: the regularised linear model of ``mode=probe`` on a clip's mean token of stage 3 or 4 (the
  last; its mean token is the embedding ``encode`` returns), fitted on the training and validation subjects;
- ``attention`` and ``mlp``: the token heads of ``probe=attention|mlp`` over the same stage's tokens, their
  learning rate and weight decay chosen on the validation subjects;
- ``FC + linear``: the Power-264 FC of each run with the same linear model.

Fixed split: 60 / 20 / 20 % of subjects (seed 0, stratified for classes); test metrics per subject (task
state: per clip) with 95 % bootstrap CIs. Random splits (subject labels): the linear probe of the last stage
and FC + linear refitted on ``--splits`` seeded stratified draws of as many training subjects as the fixed
split trains and validates on (Brainmarks' protocol, which uses 100), mean ± sd of the headline over draws.
The token heads are scored on the fixed split only: a head per draw is beyond a CPU budget. Prints the table
and writes ``frozen.csv``, ``frozen_random_splits.csv`` and ``frozen.md`` into OUT (the current folder
without ``--out``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from benchmarks.adaptation import demo_stores
from benchmarks.common import study
from benchmarks.pooling import pretrain_as_demo
from neurostorm import build_model, load_encoder
from neurostorm.data.splits import random_splits
from neurostorm.evaluation.scores import metrics_with_ci, predictions_frame
from neurostorm.models.baselines.fc_linear import upper_triangle
from neurostorm.models.linear import fit_linear, linear_outputs
from neurostorm.tasks import task_family
from neurostorm.train.config import load_config
from neurostorm.train.data import LabelledClips, over_clips
from neurostorm.train.probe import SPLITS, tokens_split
from neurostorm.train.token_probe import fit_token_probe
from neurostorm.workflows.random_splits import draw_scores

LABELS = {"sex": ("rest", ["task.label=sex"]),
          "age": ("rest", ["task.label=age", "task.kind=regression"]),
          "score": ("rest", ["task.label=score", "task.kind=regression"]),
          "diagnosis": ("rest", ["task.label=diagnosis", "task.class_weights=true"]),
          "task state": ("objects", ["task.kind=task_state", "data.sequence_length=8"])}
STAGES = (3, 4)


def _test_row(label: str, method: str, data: LabelledClips, test: dict, outputs: np.ndarray, n_classes: int,
              seconds: float) -> dict:
    family = task_family(data.config.task.kind)
    frame = predictions_frame(test["subject"], test["run_id"], test["start"], outputs, test["y"])
    result = metrics_with_ci(family.target, n_classes, frame)[family.headline]
    return {"label": label, "method": method, "metric": family.headline, "test": result["value"],
            "ci_low": result["ci_low"], "ci_high": result["ci_high"], "seconds": seconds}


def _linear(rows: dict, data: LabelledClips, n_classes: int) -> np.ndarray:
    """The probe's linear model fitted on train + val rows; outputs of the test rows."""
    fit = {k: np.concatenate([rows["train"][k], rows["val"][k]]) for k in ("output", "subject", "y")}
    target = data.target
    linear = fit_linear(fit["output"], fit["y"], fit["subject"], target.estimator,
                        balanced=data.config.task.class_weights)
    return linear_outputs(linear, rows["test"]["output"], target.estimator, n_classes)


def evaluate_label(label: str, store, overrides: list[str], encoders: dict, out, n_splits: int, steps: int
                   ) -> tuple[list[dict], list[dict]]:
    """Fixed-split rows and random-split rows of one label."""
    settings = [f"data.stores=[{store}]", "data.split_fractions=[0.6,0.2,0.2]", "trainer.seed=0",
                f"data.roi_dir={out / 'roi'}", *overrides]
    config = load_config("tiny", settings)
    family = task_family(config.task.kind)
    folder = out / "runs" / label.replace(" ", "-")
    data = LabelledClips(config, folder, family.target)
    n_classes = 1 if family.target.values else len(data.classes)
    rows, fixed_features = [], {}
    for init, encoder in encoders.items():
        for stage in STAGES:
            tokens = {split: tokens_split(encoder, data, split, stage) for split in SPLITS}  # (N, L, C) each
            means = {split: {**t, "output": t["output"].mean(1)} for split, t in tokens.items()}
            start = time.perf_counter()
            rows.append(_test_row(label, f"{init} stage {stage} linear", data, tokens["test"],
                                  _linear(means, data, n_classes), n_classes, time.perf_counter() - start))
            if stage == STAGES[-1]:
                fixed_features[f"{init} stage {stage} linear"] = means
            for head in ("attention", "mlp"):
                start = time.perf_counter()
                fitted = fit_token_probe(head, tokens["train"], tokens["val"], family.target, n_classes, steps=steps)
                rows.append({**_test_row(label, f"{init} stage {stage} {head}", data, tokens["test"],
                                         fitted.outputs(tokens["test"]["output"]), n_classes,
                                         time.perf_counter() - start),
                             "learning_rate": fitted.learning_rate, "weight_decay": fitted.weight_decay})
    if family.subject_labels:  # FC + linear, on the fixed split and beside the probes on random splits
        fc_config = load_config("tiny", [*settings, "model.name=fc-linear"])
        fc_data = LabelledClips(fc_config, folder, family.target)
        fc = {split: over_clips(upper_triangle, fc_data.loader(split)) for split in SPLITS}
        start = time.perf_counter()
        rows.append(_test_row(label, "FC + linear", fc_data, fc["test"], _linear(fc, fc_data, n_classes), n_classes,
                              time.perf_counter() - start))
        fixed_features["FC + linear"] = fc
    split_rows = []
    if family.subject_labels and n_splits:
        table = data.store.manifest.drop_duplicates("subject").astype({"subject": str}).set_index("subject")
        labels = table.loc[sorted(set().union(*data.split.values())), config.task.label]
        draws = random_splits(labels, n_splits, len(data.split["train"]) + len(data.split["val"]), seed=0,
                              stratify=family.stratified)
        for method, parts in fixed_features.items():
            every = {k: np.concatenate([parts[s][k] for s in SPLITS]) for k in ("output", "subject", "y")}
            split_rows += [{"label": label, "method": method, "metric": family.headline, **r}
                           for r in draw_scores(every, draws, family.target, n_classes, config.task.class_weights)]
    return rows, split_rows


def markdown(table: pd.DataFrame, splits: pd.DataFrame) -> str:
    """The fixed-split table with each method's spread over random splits beside it."""
    spread = splits.groupby(["label", "method"])["value"] if len(splits) else None
    means, sds, counts = (spread.mean(), spread.std(), spread.count()) if spread is not None else ({}, {}, {})
    lines = ["| label (metric) | method | fixed split: test [95 % CI] | random splits: mean ± sd (n) |",
             "|---|---|---|---|"]
    for row in table.to_dict("records"):
        key = (row["label"], row["method"])
        spread_cell = f"{means[key]:.3f} ± {sds[key]:.3f} ({counts[key]})" if key in means else ""
        lines.append(f"| {row['label']} ({row['metric']}) | {row['method']} | {row['test']:.3f} "
                     f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {spread_cell} |")
    return "\n".join(lines)


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--subjects", type=int, default=48)
        parser.add_argument("--splits", type=int, default=20, help="random splits per label (Brainmarks: 100)")
        parser.add_argument("--steps", type=int, default=400, help="AdamW steps per grid point of a token head")

    with study(__doc__, options) as (args, out, destination):
        stores = demo_stores(out, args.subjects)
        model = pretrain_as_demo(stores["rest"], out / "pretrain")
        torch.manual_seed(0)
        encoders = {"random-init": build_model("neurostorm-tiny").eval(), "pretrained": load_encoder(model).eval()}
        rows, split_rows = [], []
        for label, (store, overrides) in LABELS.items():
            fixed, random = evaluate_label(label, stores[store], overrides, encoders, out, args.splits, args.steps)
            rows += fixed
            split_rows += random
            print(f"{label}: done", flush=True)
        table, splits = pd.DataFrame(rows), pd.DataFrame(split_rows)
        if len(splits):
            splits["value"] = [r[r["metric"]] for r in splits.to_dict("records")]
        table.to_csv(destination / "frozen.csv", index=False)
        splits.to_csv(destination / "frozen_random_splits.csv", index=False)
        text = markdown(table, splits)
        (destination / "frozen.md").write_text(text + "\n")
        print(text)
        print(f"{args.subjects} subjects, {args.splits} random splits, {args.steps} steps per grid point")


if __name__ == "__main__":
    main()
