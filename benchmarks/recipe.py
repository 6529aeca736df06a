"""Why the demo's networks decided one class, and the input that lets them learn: figures on validation only.

``python -m benchmarks.recipe [--seeds 3] [--epochs 5] [--out DIR]`` simulates the default demo's resting
cohort (48 subjects, three sites, seed 0) and pretrains the tiny model as the default demo does, twice: on
the clips as stored (the reference's input: the whole brain z-normalised by one mean and sd, so every voxel
keeps its anatomical intensity) and with each voxel z-scored over the clip's frames (``voxel_zscore``). Then:

1. **Embedding spread** — each pretrained encoder's pooled embeddings of every clip: the mean magnitude of a
   dimension against its spread across clips and across subjects, and the share of the subjects' spread
   that lies between sites. A head reads only the spread.
2. **Where the label is** — linear models on validation subjects (5 folds by subject): FC of whole runs, the
   mean over a run of the FC of its 20-frame clips (what a clip model with averaged outputs could reach), and
   the frozen encoders' mean-pooled embeddings.
3. **Fine-tuning** — scratch, full fine-tuning and prompt tuning of the tiny model for sex and age, on either
   input, ``--epochs`` epochs at the demo's learning rate (constant, so the first E epochs of a run are a run
   of E epochs), one run per seed (the seed draws the split and the head). Each is scored at its best
   checkpoint by validation within the first 2 epochs (the demo's budget before) and within all epochs:
   validation balanced accuracy and AUROC (sex) or Pearson r (age), and the training loss. No figure here
   reads a test subject.
4. **Pretraining objective** — STORM with the reconstruction loss over every voxel (the reference's) or over
   brain voxels only (``loss_on_background=False``), each scored by a linear probe of its embeddings on
   validation subjects (5 folds by subject), for sex, age, phenotype score and diagnosis, beside FC + linear.

Prints the tables and writes ``recipe.md``, ``recipe_finetune.csv`` and ``recipe_pretrain.csv`` into OUT
(the current folder without ``--out``).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import seeds_and_epochs, study, validation_by_epoch
from benchmarks.pooling import _fc_series, demo_rest_store, evaluate_families, pretrain_as_demo
from neurostorm import load_encoder
from neurostorm.data.roi import extract_rois
from neurostorm.data.store import Store
from neurostorm.train.config import load_config
from neurostorm.train.pooling import RunSeries, run_series
from neurostorm.workflows.finetune import finetune

ZSCORE = "model.overrides={voxel_zscore: true}"
INPUTS = {"as stored": [], "voxel z-scored": [ZSCORE]}  # pretraining overrides of each input
LABELS = {"sex": ["task.label=sex"], "age": ["task.label=age", "task.kind=regression"]}
METHODS = {"scratch": "full", "full fine-tuning": "full", "prompt tuning": "prompt"}  # name → mode
CLIP = 20  # frames per clip, as the demo trains


def embedding_spread(series: RunSeries, site_of: pd.Series) -> dict[str, float]:
    """Mean |value| of an embedding dimension against its standard deviation across clips and across
    subjects' mean embeddings (averaged over dimensions), and the share of the subjects' spread (sum of
    squares about the mean, over dimensions) that lies between their sites (``site_of``: subject → site)."""
    clips = np.concatenate(series.clips)  # (N clips, D)
    runs = pd.DataFrame(np.concatenate([c.mean(0, keepdims=True) for c in series.clips]))
    by_subject = runs.groupby(np.array(series.subjects)).mean()  # (S, D)
    centred = by_subject - by_subject.mean()
    site_means = centred.groupby(site_of.loc[by_subject.index].to_numpy()).transform("mean")
    return {"mean |value|": float(np.abs(clips).mean()), "sd across clips": float(clips.std(0).mean()),
            "sd across subjects": float(by_subject.to_numpy().std(0).mean()),
            "share of the subjects' spread between sites": float((site_means**2).to_numpy().sum()
                                                                 / (centred**2).to_numpy().sum())}


def clip_fc_series(roi: Path, store: Store, length: int = CLIP) -> RunSeries:
    """Per run, the Fisher-z FC of each ``length``-frame clip (no overlap) as that clip's row: mean pooling
    then fits a linear model to the mean of a run's clip FCs."""
    subject = store.manifest.set_index("run_id")["subject"].astype(str)
    series = RunSeries()
    for run_id in store.manifest["run_id"]:
        signals = np.load(roi / "timeseries" / f"{run_id}.npy")  # (T, R)
        upper = np.triu_indices(signals.shape[1], k=1)
        rows = []
        for start in range(0, len(signals) - length + 1, length):
            with np.errstate(invalid="ignore", divide="ignore"):
                correlation = np.corrcoef(signals[start:start + length].T)[upper]
            rows.append(np.arctanh(np.clip(np.nan_to_num(correlation), -0.999999, 0.999999)))
        clips = np.array(rows, dtype=np.float32)
        series.add(run_id, subject[run_id], clips, clips, clips)
    return series


def finetune_runs(store: Path, models: dict[str, Path], out: Path, seeds: int, epochs: int) -> pd.DataFrame:
    """One row per (input, method, label, seed, epoch): validation metrics and training loss per epoch."""
    rows = []
    for i, ((input_name, model), (method, mode), (label, task), seed) in enumerate(
            itertools.product(models.items(), METHODS.items(), LABELS.items(), range(seeds))):
        init = ["model.init=scratch", *INPUTS[input_name]] if method == "scratch" else [f"model.init={model}"]
        folder = out / str(i)
        config = load_config("tiny", [f"trainer.seed={seed}", "data.split_fractions=[0.6,0.2,0.2]",
                                      "trainer.progress=false", f"optim.epochs={epochs}", f"data.stores=[{store}]",
                                      f"mode={mode}", *init, *task])
        start = time.perf_counter()
        finetune(config, folder)
        rows += [{"input": input_name, "method": method, "label": label, "seed": seed, **epoch,
                  "seconds": time.perf_counter() - start} for epoch in validation_by_epoch(folder).to_dict("records")]
        print(f"{input_name} {method} {label} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return pd.DataFrame(rows)


def at_best(runs: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """Per run, the validation metrics of the checkpoint a fine-tuning of ``epochs`` epochs keeps (the first
    epoch with the highest val_score) and of its last epoch, the training loss of its first and last epochs."""
    kept = runs[runs["epoch"] <= epochs]
    rows = []
    for key, run in kept.groupby(["input", "method", "label", "seed"], sort=False):
        best, last = run.loc[run["val_score"].idxmax()], run.iloc[-1]
        ranking = "val_auroc" if key[2] == "sex" else "val_pearson_r"
        rows.append({**dict(zip(["input", "method", "label", "seed"], key, strict=True)), "epochs": epochs,
                     "val_balanced_accuracy": best["val_balanced_accuracy"], "val_ranking": best[ranking],
                     "val_ranking_last": last[ranking], "train_loss_first": run["train_loss"].iloc[0],
                     "train_loss_last": run["train_loss"].iloc[-1]})
    return pd.DataFrame(rows)


def main() -> None:
    with study(__doc__, seeds_and_epochs(5)) as (args, out, destination):
        store_path = demo_rest_store(out)
        store = Store(store_path)
        models = {name: pretrain_as_demo(store_path, out / f"pretrain-{i}", *overrides)
                  for i, (name, overrides) in enumerate(INPUTS.items())}
        series = {name: run_series(load_encoder(model), store, store.manifest, length=CLIP)
                  for name, model in models.items()}
        site_of = store.manifest.astype({"subject": str}).drop_duplicates("subject").set_index("subject")["site"]
        spread = {name: embedding_spread(s, site_of) for name, s in series.items()}
        extract_rois(str(store_path), "power264", out / "roi", progress=False)
        information = evaluate_families({"FC + linear": _fc_series(out / "roi", store),
                                         "FC of 20-frame clips mean": clip_fc_series(out / "roi", store),
                                         **{f"probe, {name} mean": s for name, s in series.items()}}, store)
        runs = finetune_runs(store_path, models, out / "finetune", args.seeds, args.epochs)
        objectives = objective_scores(out, store, models["as stored"])
        text = markdown(spread, information, runs, objectives, args.seeds, args.epochs)
        (destination / "recipe.md").write_text(text + "\n")
        runs.to_csv(destination / "recipe_finetune.csv", index=False)
        objectives.to_csv(destination / "recipe_pretrain.csv", index=False)
        print(text)


def objective_scores(out: Path, store: Store, base_model: Path) -> pd.DataFrame:
    brain_model = pretrain_as_demo(Path(store.location), out / "pretrain-brain-only",
                                   "model.overrides={loss_on_background: false}")
    methods = {"FC + linear": _fc_series(out / "roi", store),
               "every voxel (reference) mean": run_series(load_encoder(base_model), store, store.manifest, length=CLIP),
               "brain voxels only mean": run_series(load_encoder(brain_model), store, store.manifest, length=CLIP)}
    return evaluate_families(methods, store)


def markdown(spread: dict, information: pd.DataFrame, runs: pd.DataFrame, objectives: pd.DataFrame, seeds: int,
             epochs: int) -> str:
    lines = [f"Pretrained embeddings, {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
             for name, values in spread.items()]
    lines += ["", "| label | linear model of | validation score |", "|---|---|---|"]
    lines += [f"| {row['family']} ({row['metric']}) | {row['method'].removesuffix(' mean')} | {row['validation']:.3f} |"
              for row in information.to_dict("records") if row["family"] in LABELS]
    lines += ["", "| label | input | method | epochs | val balanced accuracy | val AUROC / Pearson r | "
                  "… at the last epoch | train loss, first → last epoch |", "|---|---|---|---|---|---|---|---|"]
    summary = pd.concat([at_best(runs, 2), at_best(runs, epochs)]).groupby(
        ["label", "input", "method", "epochs"], sort=False).mean(numeric_only=True)
    for (label, input_name, method, kept), row in summary.iterrows():
        accuracy = "" if label == "age" else f"{row['val_balanced_accuracy']:.3f}"
        lines.append(f"| {label} | {input_name} | {method} | {kept} | {accuracy} | {row['val_ranking']:.3f} | "
                     f"{row['val_ranking_last']:.3f} | {row['train_loss_first']:.3f} → {row['train_loss_last']:.3f} |")
    lines += ["", f"(means of {seeds} seeds)", "", "| label | pretraining loss over | probe validation score |",
              "|---|---|---|"]
    for row in objectives.to_dict("records"):
        lines.append(f"| {row['family']} ({row['metric']}) | {row['method'].removesuffix(' mean')} | "
                     f"{row['validation']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
