"""Adapting the pretrained encoder at demo scale: STRD during fine-tuning, and heads on standardised embeddings.

``python -m benchmarks.adaptation [--seeds 3] [--epochs 6] [--out DIR]`` simulates the default demo's cohort
(``neurostorm.workflows.demo.demo_cohort``), preprocesses its resting and block-design runs onto the 4 mm grid and
pretrains the tiny model as the default demo does (STORM, spatiotemporal redundancy dropout in every block).
Task state, sex and age, one split per seed (the seed draws the split and the head); every run is scored at
the checkpoint it keeps by validation: balanced accuracy and AUROC (task state, sex) or Pearson r (age), and
the training loss of its last epoch. No figure here reads a test subject.

1. **Embeddings**: over 8 clips, how far a training-mode embedding lies from the evaluation-mode one with
   STRD on and off; how far one full fine-tuning step at the demo's learning rate and at the paper's moves
   the embeddings, how much of that is a shift of their mean, and whether their arrangement around the mean
   holds; and the spread of the embeddings across the clips that a head has to read.
2. **STRD during fine-tuning**: full fine-tuning and prompt tuning for the demo's 2 epochs with STRD on —
   what fine-tuning of a pretraining folder ran with before, its configuration carrying it — and off, as
   ``load_encoder`` now gives it.
3. **Standardised head**: prompt tuning and LoRA with a plain linear head and with ``head_standardise``,
   ``--epochs`` epochs at the demo's learning rate (constant, so the first 2 epochs are the demo's runs),
   each scored at the checkpoint kept within 2 epochs and within all; beside them a linear probe of the
   frozen embeddings fitted on the training clips and scored on validation.
4. **Full fine-tuning and scratch**: with a plain head (the demo's before), with ``head_standardise`` (each
   training batch centred by its own mean, the statistics refitted before each validation), and with it and
   the encoder at the paper's fine-tuning rate (``optim.pretrained_lr=5e-5``, the head at the demo's), scored
   as in 3.

``--sections`` picks some of ``embeddings,strd,heads,full`` (all by default).

Prints the tables and writes ``adaptation.md`` and ``adaptation_runs.csv`` into OUT (the current folder
without ``--out``).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import seeds_and_epochs, study, validation_by_epoch
from benchmarks.pooling import pretrain_as_demo
from neurostorm.data.datasets import ClipDataset, decoded
from neurostorm.data.simulate import simulate_cohort
from neurostorm.evaluation.scores import subject_metrics
from neurostorm.models.linear import fit_linear, linear_outputs
from neurostorm.models.weights import load_encoder
from neurostorm.tasks import task_family
from neurostorm.train.config import load_config
from neurostorm.train.data import LabelledClips, fit_to_model
from neurostorm.train.probe import embed_split
from neurostorm.train.trainer import initial_encoder
from neurostorm.workflows.demo import demo_cohort, preprocess_stores
from neurostorm.workflows.finetune import finetune

LABELS = {"task state": ("objects", ["task.kind=task_state", "data.sequence_length=8"]),
          "sex": ("rest", ["task.label=sex"]),
          "age": ("rest", ["task.label=age", "task.kind=regression"])}
DEMO_LR, DEMO_EPOCHS = 1e-3, 2  # the tiny preset's learning rate; the default demo's epochs
STRD_ARMS = {("full fine-tuning", "STRD on (before)"): ["mode=full", "model.overrides={strd: true}"],
             ("full fine-tuning", "STRD off (now)"): ["mode=full"],
             ("prompt tuning", "STRD on (before)"): ["mode=prompt", "model.overrides={strd: true}"],
             ("prompt tuning", "STRD off (now)"): ["mode=prompt"]}
HEAD_ARMS = {(method, head): [f"mode={mode}", f"head_standardise={head == 'standardised'}"]
             for (method, mode), head in itertools.product([("prompt tuning", "prompt"), ("LoRA", "lora")],
                                                           ["plain", "standardised"])}
FULL_ARMS = {("full fine-tuning", "plain head"): ["mode=full"],
             ("full fine-tuning", "standardised head"): ["mode=full", "head_standardise=true"],
             ("full fine-tuning", "standardised head, pretrained lr 5e-5"): ["mode=full", "head_standardise=true",
                                                                         "optim.pretrained_lr=5e-5"],
             ("scratch", "plain head"): ["mode=full", "model.init=scratch"],
             ("scratch", "standardised head"): ["mode=full", "model.init=scratch", "head_standardise=true"]}
SECTIONS = ("embeddings", "strd", "heads", "full")


def demo_stores(out: Path, subjects: int | None = None) -> dict[str, Path]:
    """The default demo's cohort (of ``subjects``, default its 48) in OUT/bids (simulated unless there) and
    its resting and block-design runs preprocessed as the demo does into OUT/store-rest and OUT/store-objects."""
    if not (out / "bids" / "participants.tsv").exists():
        simulate_cohort(out / "bids", demo_cohort(subjects=subjects))
    return preprocess_stores(out / "bids", out, ("rest", "objects"))


def embedding_figures(model: Path, store: Path) -> dict[str, float]:
    """Over 8 clips of 20 frames: mean |training-mode − evaluation-mode embedding| with STRD on and off; after
    one AdamW step of full fine-tuning at the demo's learning rate and at the paper's (on the mean embedding,
    a stand-in loss: Adam's first step does not depend on the gradient's scale) the mean |change| of the
    embeddings, of their mean, and the correlation of the embeddings centred on their mean before and after;
    and the embeddings' mean standard deviation across the clips."""
    clips = ClipDataset(store, sequence_length=20)
    figures = {}
    for name, strd in (("STRD on", True), ("STRD off", False)):
        encoder = load_encoder(model, strd=strd)
        x = fit_to_model(torch.stack([decoded(clips[i])["x"] for i in range(8)]), encoder.config.img_size)
        torch.manual_seed(0)
        with torch.no_grad():
            training, evaluation = encoder.train().encode(x), encoder.eval().encode(x)
        figures[f"train − eval, {name}"] = float((training - evaluation).abs().mean())
    centred = evaluation - evaluation.mean(0)
    for lr in (DEMO_LR, 5e-5):
        encoder = load_encoder(model).eval()
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr)
        encoder.encode(x).mean().backward()
        optimizer.step()
        with torch.no_grad():
            stepped = encoder.encode(x)
        moved = stepped - stepped.mean(0)
        figures[f"one step at lr {lr:g}"] = float((stepped - evaluation).abs().mean())
        figures[f"its mean, lr {lr:g}"] = float((stepped.mean(0) - evaluation.mean(0)).abs().mean())
        figures[f"centred correlation, lr {lr:g}"] = float((centred * moved).sum() / (centred.norm() * moved.norm()))
    figures["sd across clips"] = float(evaluation.std(0).mean())
    return figures


def adaptation_runs(arms: dict, stores: dict[str, Path], model: Path, out: Path, seeds: int, epochs: int
                    ) -> pd.DataFrame:
    """One row per (arm, label, seed, epoch): validation metrics and training loss per epoch."""
    rows = []
    for i, ((key, overrides), (label, (store, task)), seed) in enumerate(
            itertools.product(arms.items(), LABELS.items(), range(seeds))):
        folder = out / str(i)
        config = load_config("tiny", [f"trainer.seed={seed}", "data.split_fractions=[0.6,0.2,0.2]",
                                      "trainer.progress=false", f"optim.epochs={epochs}",
                                      f"data.stores=[{stores[store]}]", f"model.init={model}", *overrides, *task])
        start = time.perf_counter()
        finetune(config, folder)
        epochs_run = validation_by_epoch(folder)
        ranking = epochs_run["val_pearson_r" if label == "age" else "val_auroc"]
        rows += [{"method": key[0], "arm": key[1], "label": label, "seed": seed, **epoch}
                 for epoch in epochs_run.assign(val_ranking=ranking).to_dict("records")]
        print(f"{' '.join(key)} {label} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return pd.DataFrame(rows)


def kept(runs: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """Means over seeds of each run's checkpoint kept within ``epochs`` (the first with the best val_score),
    with the training loss of that run's last epoch."""
    within = runs[runs["epoch"] <= epochs]
    best = within.loc[within.groupby(["method", "arm", "label", "seed"], sort=False)["val_score"].idxmax()]
    last = within.groupby(["method", "arm", "label", "seed"], sort=False)["train_loss"].last()
    best = best.set_index(["method", "arm", "label", "seed"]).assign(train_loss=last)
    return best.groupby(["label", "method", "arm"], sort=False).mean(numeric_only=True).assign(epochs=epochs)


def probe_on_validation(model: Path, stores: dict[str, Path], out: Path, seeds: int) -> pd.DataFrame:
    """A linear probe of the frozen embeddings fitted on the training clips of each seed's split and scored on
    its validation subjects (mean over seeds)."""
    rows = []
    for (label, (store, task)), seed in itertools.product(LABELS.items(), range(seeds)):
        config = load_config("tiny", [f"trainer.seed={seed}", "data.split_fractions=[0.6,0.2,0.2]",
                                      f"data.stores=[{stores[store]}]", f"model.init={model}", *task])
        folder = out / f"probe-{label.replace(' ', '-')}-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        target = task_family(config.task.kind).target
        data = LabelledClips(config, folder, target)
        encoder = initial_encoder(config, data)
        train, val = embed_split(encoder, data, "train"), embed_split(encoder, data, "val")
        n_outputs = 1 if target.values else len(data.classes)
        linear = fit_linear(train["output"], train["y"], train["subject"], target.estimator)
        scores = subject_metrics(target, n_outputs, val["subject"],
                                 linear_outputs(linear, val["output"], target.estimator, n_outputs), val["y"])
        rows.append({"label": label, "val_balanced_accuracy": scores.get("balanced_accuracy", np.nan),
                     "val_ranking": scores["pearson_r" if label == "age" else "auroc"]})
    return pd.DataFrame(rows).groupby("label", sort=False).mean()


def markdown(figures: dict[str, float], tables: list[pd.DataFrame], probe: pd.DataFrame | None, seeds: int) -> str:
    lines = ["Embeddings of 8 clips (mean |difference|): " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()),
             ""] if figures else []
    if tables or probe is not None:
        lines += ["| label | method | arm | epochs | val balanced accuracy | val AUROC / Pearson r | "
                  "train loss, last epoch |", "|---|---|---|---|---|---|---|"]
    for (label, method, arm), row in pd.concat(tables).iterrows() if tables else ():
        accuracy = "" if label == "age" else f"{row['val_balanced_accuracy']:.3f}"
        lines.append(f"| {label} | {method} | {arm} | {row['epochs']:.0f} | {accuracy} | {row['val_ranking']:.3f} | "
                     f"{row['train_loss']:.3f} |")
    for label, row in probe.iterrows() if probe is not None else ():
        accuracy = "" if label == "age" else f"{row['val_balanced_accuracy']:.3f}"
        lines.append(f"| {label} | linear probe (train clips) | frozen | | {accuracy} | {row['val_ranking']:.3f} | |")
    lines += ["", f"(means of {seeds} seeds, each run at the checkpoint kept by validation within its epochs)"]
    return "\n".join(lines)


def kept_by_budget(runs: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """:func:`kept` within the demo's 2 epochs and within ``epochs``, rows grouped by label, method and arm."""
    return pd.concat([kept(runs, e) for e in sorted({DEMO_EPOCHS, epochs})]).reset_index().sort_values(
        ["label", "method", "arm", "epochs"], kind="stable").set_index(["label", "method", "arm"])


def main() -> None:
    def options(parser) -> None:
        seeds_and_epochs(6)(parser)
        parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))

    with study(__doc__, options) as (args, out, destination):
        sections = args.sections.split(",")
        if unknown := set(sections) - set(SECTIONS):
            raise SystemExit(f"--sections: unknown {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})")
        stores = demo_stores(out)
        model = out / "pretrain" / "model"
        if not (model / "model.safetensors").exists():
            pretrain_as_demo(stores["rest"], out / "pretrain")
        figures = embedding_figures(model, stores["rest"]) if "embeddings" in sections else {}
        runs, tables, probe = [], [], None
        if "strd" in sections:
            runs.append(adaptation_runs(STRD_ARMS, stores, model, out / "strd", args.seeds, DEMO_EPOCHS))
            tables.append(kept(runs[-1], DEMO_EPOCHS))
        for section, arms in (("heads", HEAD_ARMS), ("full", FULL_ARMS)):
            if section in sections:
                runs.append(adaptation_runs(arms, stores, model, out / section, args.seeds, args.epochs))
                tables.append(kept_by_budget(runs[-1], args.epochs))
        if "heads" in sections:
            probe = probe_on_validation(model, stores, out / "probe", args.seeds)
        text = markdown(figures, tables, probe, args.seeds)
        (destination / "adaptation.md").write_text(text + "\n")
        if runs:
            pd.concat(runs).to_csv(destination / "adaptation_runs.csv", index=False)
        print(text)


if __name__ == "__main__":
    main()
