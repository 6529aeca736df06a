"""Pretraining on an fMRIPrep-like cohort: the reference's background fill against a bounded one.

``python -m benchmarks.background [--floor -3] [--out DIR]`` simulates the default demo's resting cohort
(48 subjects, two 24-frame runs at TR 2 s, 4 mm, three sites, seed 0) twice: as the demo has it, and with
the two things that make real fMRIPrep cohorts differ after the reference's normalisation — a low grey/white
contrast (``contrast=0.1``) and deep susceptibility dropout in orbitofrontal and temporal-pole voxels
(``dropout=0.95``), so that a few brain voxels lie ~10 z below the brain mean and the reference fills the
background there. The second cohort is preprocessed twice: with the reference's fill and with
``fill_floor`` (brain values below the floor clipped to it, background at it). On each store the tiny model
is pretrained as the default demo does, with the reconstruction loss over every voxel (the reference's) or
over brain voxels only (``loss_on_background=False``). Every figure is on subjects the pretraining held out
or on validation folds:

- the store's fill (median over runs) and int8 quantisation RMSE (z units);
- the last validation loss beside the mean predictor's (each in its own input's units);
- **interior R²**: reconstruction of masked voxels that lie above the floor in every frame (the same voxels
  and values under either fill), 1 − SSE / the SSE of the interior's mean — one yardstick for all arms;
- a linear probe of the frozen encoder's mean-pooled embeddings (5 folds by subject, validation score) for
  sex, age, phenotype score and diagnosis, beside FC + linear.

Prints the table and writes ``background.md`` and ``background.csv`` into OUT (the current folder without
``--out``; the cohorts and runs then go to a temporary folder).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from benchmarks.common import study
from benchmarks.pooling import _fc_series, demo_pretraining, demo_rest_store, evaluate_families, pretrain_as_demo
from benchmarks.recipe import CLIP
from neurostorm import load_encoder, load_pretrained
from neurostorm.data.datasets import decoded
from neurostorm.data.roi import extract_rois
from neurostorm.data.store import Store
from neurostorm.train.data import PretrainClips, fit_to_model
from neurostorm.train.pooling import run_series

FMRIPREP_LIKE = {"contrast": 0.1, "dropout": 0.95}
OBJECTIVES = {"every voxel": [], "brain voxels only": ["model.overrides={loss_on_background: false}"]}


@torch.no_grad()
def interior_r2(model_folder: Path, store: Path, floor: float, run_dir: Path) -> float:
    """1 − SSE / SST of the reconstruction over masked voxels above ``floor`` + 0.5 in every frame of the
    pretraining's held-out clips (fixed masks), SST about each clip's interior mean."""
    model = load_pretrained(model_folder).eval()
    held_out = PretrainClips(demo_pretraining(store), run_dir).val_set
    squared_error = total = 0.0
    for i, batch in enumerate(map(decoded, DataLoader(held_out, batch_size=4))):
        x = model.encoder.standardise(fit_to_model(batch["x"], model.config.encoder.img_size))  # (B, 1, X, Y, Z, T)
        out = model(x, generator=torch.Generator().manual_seed(i))
        patch_voxels = model.encoder.patch_embed.patchify(torch.ones_like(x)).shape[-1]
        masked = model.unpatchify(out.mask[..., None].float().expand(*out.mask.shape, patch_voxels))
        interior = (x > floor + 0.5).all(dim=5, keepdim=True).float()
        weight = masked * interior
        dims = (1, 2, 3, 4, 5)
        interior_mean = (x * interior).sum(dims, keepdim=True) / interior.sum(dims, keepdim=True) / x.shape[5]
        squared_error += float(((out.prediction - x) ** 2 * weight).sum())
        total += float(((x - interior_mean) ** 2 * weight).sum())
    return 1.0 - squared_error / total


def arm_figures(store: Path, out: Path, objective: str, floor: float) -> dict:
    """Pretrain on ``store`` with ``objective``; its store and loss figures, interior R² and model folder."""
    model = pretrain_as_demo(store, out, *OBJECTIVES[objective])
    log = pd.read_csv(out / "logs" / "metrics.csv").dropna(subset=["val_loss"]).iloc[-1]
    manifest = Store(store).manifest
    return {"fill": float(manifest["fill_value"].median()),
            "quantisation_rmse": float(manifest["quantization_rmse"].median()), "val_loss": float(log["val_loss"]),
            "val_loss_mean_predictor": float(log["val_loss_mean_predictor"]),
            "interior_r2": interior_r2(model, store, floor, out / "held-out"), "model": model}


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--floor", type=float, default=-3.0, help="fill floor (z) of the bounded arm")

    started = time.perf_counter()
    with study(__doc__, options) as (args, out, destination):
        stores = {"demo cohort, reference fill": demo_rest_store(out, name="store-demo"),
                  "fMRIPrep-like, reference fill": demo_rest_store(out, cohort=FMRIPREP_LIKE, name="store-reference"),
                  f"fMRIPrep-like, fill floor {args.floor:g}": demo_rest_store(
                      out, cohort=FMRIPREP_LIKE, fill_floor=args.floor, name="store-floor")}
        rows = []
        for i, (input_name, store) in enumerate(stores.items()):
            for objective in OBJECTIVES if i else ["every voxel"]:
                rows.append({"input": input_name, "loss over": objective,
                             **arm_figures(store, out / f"pretrain-{len(rows)}", objective, args.floor)})
                print(f"{input_name}, loss over {objective}: {time.perf_counter() - started:.0f} s", flush=True)
        reference = Store(stores["fMRIPrep-like, reference fill"])
        extract_rois(str(reference.location), "power264", out / "roi", progress=False)
        methods = {"FC + linear": _fc_series(out / "roi", reference)}
        for k, row in enumerate(rows[1:]):  # the probes read the fMRIPrep-like cohort's subjects
            store = Store(stores[row["input"]])
            methods[f"{k} mean"] = run_series(load_encoder(row["model"]), store, store.manifest, length=CLIP)
        probes = evaluate_families(methods, reference)
        table = pd.DataFrame(rows).drop(columns="model")
        for family, scores in probes.groupby("family", sort=False):
            by_method = scores.set_index("method")["validation"]
            table[f"probe {family}"] = [float("nan"), *(by_method[f"{k} mean"] for k in range(len(rows) - 1))]
        text = markdown(table, probes)
        (destination / "background.md").write_text(text + "\n")
        table.to_csv(destination / "background.csv", index=False)
        print(text)


def markdown(table: pd.DataFrame, probes: pd.DataFrame) -> str:
    families = [c for c in table.columns if c.startswith("probe ")]
    lines = ["| input | loss over | fill (z) | int8 RMSE | val loss | mean predictor | interior R² | "
             + " | ".join(families) + " |", "|---" * (7 + len(families)) + "|"]
    for row in table.to_dict("records"):
        probe = " | ".join("" if pd.isna(row[f]) else f"{row[f]:.3f}" for f in families)
        lines.append(f"| {row['input']} | {row['loss over']} | {row['fill']:.2f} | {row['quantisation_rmse']:.4f} | "
                     f"{row['val_loss']:.3f} | {row['val_loss_mean_predictor']:.3f} | {row['interior_r2']:.3f} | "
                     f"{probe} |")
    fc = probes[probes["method"] == "FC + linear"].set_index("family")
    lines += ["", "FC + linear on the fMRIPrep-like cohort (validation): "
              + ", ".join(f"{family} {fc.loc[family, 'validation']:.3f} ({fc.loc[family, 'metric']})"
                          for family in fc.index)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
