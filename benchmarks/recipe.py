"""Why the demo's networks decide one class, and which recipe to use: figures on validation subjects only.

``python -m benchmarks.recipe [--seeds 3] [--out DIR]`` simulates the default demo's resting cohort (48
subjects, three sites, seed 0), pretrains the tiny model as the default demo does, then:

1. **Embedding spread** — the pretrained encoder's pooled embeddings of every clip: the mean magnitude of a
   dimension against its spread across clips (and across subjects). A head reads only the spread.
2. **Fine-tuning recipes** — full fine-tuning of the pretrained encoder for sex and age under each recipe
   (learning rate, warm-up + cosine decay, epochs; the simulated sexes are balanced, so class weights
   change nothing), one run per seed (the seed draws the split and the head), each scored at its best
   checkpoint by validation: validation balanced accuracy and AUROC (sex) or Pearson r (age). No figure
   here reads a test subject.
3. **Pretraining objective** — STORM with the reconstruction loss over every voxel (the reference's) or over
   brain voxels only (``loss_on_background=False``), each scored downstream by a linear probe of its mean-
   pooled embeddings, fitted on training subjects and scored on validation subjects (5 folds by subject),
   for sex, age, phenotype score and diagnosis, beside FC + linear on the same folds.

Prints three tables and writes ``recipe.md`` into OUT (the current folder without ``--out``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.pooling import _fc_series, demo_rest_store, evaluate_families, pretrain_as_demo
from neurostorm import load_encoder
from neurostorm.data.roi import extract_rois
from neurostorm.data.store import Store
from neurostorm.train.config import load_config
from neurostorm.train.pooling import run_series
from neurostorm.train.run import finetune

RECIPES = {  # name → overrides on the demo's fine-tuning (tiny preset: lr 1e-3; the demo runs 2 epochs)
    "demo: lr 1e-3, 2 epochs": [],
    "lr 1e-4, 2 epochs": ["optim.lr=1e-4"],
    "lr 1e-3, warm-up 1 + cosine, 2 epochs": ["optim.warmup_epochs=1", "optim.cosine=true"],
    "lr 1e-4, 10 epochs": ["optim.lr=1e-4", "optim.epochs=10"],
}
LABELS = {"sex": ["task.label=sex"], "age": ["task.label=age", "task.kind=regression"]}


def embedding_spread(model: Path, store: Store) -> dict[str, float]:
    """Mean |value| of an embedding dimension against its standard deviation across clips and across
    subjects' mean embeddings (averaged over dimensions)."""
    series = run_series(load_encoder(model), store, store.manifest, length=20)
    clips = np.concatenate(series.clips)  # (N clips, D)
    subjects = pd.DataFrame(np.concatenate([c.mean(0, keepdims=True) for c in series.clips]))
    by_subject = subjects.groupby(np.array(series.subjects)).mean().to_numpy()
    return {"clips": len(clips), "mean |value|": float(np.abs(clips).mean()),
            "sd across clips": float(clips.std(0).mean()), "sd across subjects": float(by_subject.std(0).mean())}


def recipe_scores(store: Path, model: Path, out: Path, seeds: int) -> pd.DataFrame:
    rows = []
    for label, task in LABELS.items():
        for name, overrides in RECIPES.items():
            for seed in range(seeds):
                folder = out / f"{label}-{len(rows)}"
                config = load_config("tiny", [f"trainer.seed={seed}", "data.split_fractions=[0.6,0.2,0.2]",
                                              "trainer.progress=false", "optim.epochs=2", f"data.stores=[{store}]",
                                              f"model.init={model}", *task, *overrides])
                start = time.perf_counter()
                finetune(config, folder)
                log = pd.read_csv(folder / "logs" / "metrics.csv")
                validated = log.dropna(subset=["val_score"])
                best = validated.loc[validated["val_score"].idxmax()]  # the checkpoint finetune tests
                train_loss = log["train_loss_epoch"].dropna()
                rows.append({"label": label, "recipe": name, "seed": seed,
                             "val_balanced_accuracy": best.get("val_balanced_accuracy", np.nan),
                             "val_auroc": best.get("val_auroc", np.nan), "val_pearson_r": best.get("val_pearson_r",
                                                                                                  np.nan),
                             "train_loss_first": train_loss.iloc[0], "train_loss_last": train_loss.iloc[-1],
                             "seconds": time.perf_counter() - start})
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def objective_scores(out: Path, store: Store, base_model: Path) -> pd.DataFrame:
    brain_model = pretrain_as_demo(Path(store.location), out / "pretrain-brain-only",
                                   "model.overrides={loss_on_background: false}")
    extract_rois(str(store.location), "power264", out / "roi", progress=False)
    methods = {"FC + linear": _fc_series(out / "roi", store),
               "every voxel (reference) mean": run_series(load_encoder(base_model), store, store.manifest, length=20),
               "brain voxels only mean": run_series(load_encoder(brain_model), store, store.manifest, length=20)}
    return evaluate_families(methods, store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None, help="folder for the cohort and runs (default: a temporary one)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        store_path = demo_rest_store(out)
        model = pretrain_as_demo(store_path, out / "pretrain")
        store = Store(store_path)
        spread = embedding_spread(model, store)
        recipes = recipe_scores(store_path, model, out / "finetune", args.seeds)
        objectives = objective_scores(out, store, model)
        text = markdown(spread, recipes, objectives, args.seeds)
        destination = Path(args.out) if args.out else Path(".")
        (destination / "recipe.md").write_text(text + "\n")
        recipes.to_csv(destination / "recipe_finetune.csv", index=False)
        objectives.to_csv(destination / "recipe_pretrain.csv", index=False)
        print(text)
        print(f"\n{time.perf_counter() - started:.0f} s")


def markdown(spread: dict, recipes: pd.DataFrame, objectives: pd.DataFrame, seeds: int) -> str:
    lines = ["Pretrained embeddings: " + ", ".join(f"{k} {v:.4g}" for k, v in spread.items()), "",
             f"| label | recipe (mean of {seeds} seeds) | val balanced accuracy | val AUROC / Pearson r | "
             "train loss, first → last epoch |", "|---|---|---|---|---|"]
    summary = recipes.groupby(["label", "recipe"], sort=False).mean(numeric_only=True)
    for (label, recipe), row in summary.iterrows():
        score = row["val_auroc"] if label == "sex" else row["val_pearson_r"]
        accuracy = "" if label == "age" else f"{row['val_balanced_accuracy']:.3f}"
        lines.append(f"| {label} | {recipe} | {accuracy} | {score:.3f} | {row['train_loss_first']:.3f} → "
                     f"{row['train_loss_last']:.3f} |")
    lines += ["", "| label | pretraining loss over | probe validation score |", "|---|---|---|"]
    for row in objectives.to_dict("records"):
        lines.append(f"| {row['family']} ({row['metric']}) | {row['method'].removesuffix(' mean')} | "
                     f"{row['validation']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
