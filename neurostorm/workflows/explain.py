"""Where in the brain a prediction comes from: integrated-gradients maps of a fine-tuned model.

Integrated gradients (Sundararajan et al., 2017) through Captum: for an input clip x and a baseline x₀,
A = (x − x₀) ⊙ ∫₀¹ ∂f(x₀ + α(x − x₀))/∂x dα, so the attributions of a clip sum to f(x) − f(x₀). The
baseline is the run's background value everywhere (``fill_value`` of the store: what preprocessing writes
outside the brain), i.e. a clip with no brain signal at all. f is a class logit (every class of a
classifier; a two-class model's one logit z counts as z for the second class and −z for the first) or the
regression output.

Per clip, A (X, Y, Z, T) gives a signed map Σₜ A and an absolute map Σₜ |A|, and a time profile Σ_voxels |A|
per clip frame; these are averaged over a subject's clips, then over subjects. Maps are written as NIfTI
on the store's MNI grid (its affine; the grid the model read, before any pooling to the model's size), so
they overlay the template in nilearn or FSLeyes; an atlas table ranks ROIs (and networks) by mean |A|.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn

from neurostorm.data.atlases import Atlas, load_atlas
from neurostorm.data.datasets import clip_tensor
from neurostorm.data.files import write_csv_atomic, write_json_atomic
from neurostorm.data.html import write_markdown_report
from neurostorm.data.store import Store
from neurostorm.errors import InputError
from neurostorm.evaluation.run_report import figure_paragraph
from neurostorm.train.config import ExperimentConfig, load_config
from neurostorm.train.data import check_stores_fit, fit_to_model
from neurostorm.train.run import load_adapted


@dataclass
class AttributionMaps:
    """Attributions per class (regression: one "output" class), averaged over clips and subjects."""

    classes: list[str]
    signed: np.ndarray  # (C, X, Y, Z) Σ over a clip's frames of A
    absolute: np.ndarray  # (C, X, Y, Z) Σ over a clip's frames of |A|
    time_profile: np.ndarray  # (C, T) Σ over voxels of |A| per clip frame
    subjects: list[str]
    clips: int  # clips attributed per class


class ClassOutputs(nn.Module):
    """clip (B, 1, X, Y, Z, T) → one output per class (B, C), the input pooled to the encoder's size."""

    def __init__(self, encoder: nn.Module, head: nn.Module, binary: bool) -> None:
        super().__init__()
        self.encoder, self.head, self.binary = encoder, head, binary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.encoder.encode(fit_to_model(x, self.encoder.config.img_size)))
        return torch.cat([-out, out], dim=1) if self.binary else out


def integrated_gradients(model: ClassOutputs, clip: torch.Tensor, fill: float, target: int, steps: int = 32,
                         batch: int = 8) -> torch.Tensor:
    """IG of output ``target`` for one clip (1, 1, X, Y, Z, T) from a constant ``fill`` baseline: (X, Y, Z, T)."""
    from captum.attr import IntegratedGradients

    attribution = IntegratedGradients(model).attribute(clip, baselines=fill, target=target, n_steps=steps,
                                                       internal_batch_size=batch)
    return attribution[0, 0].detach()


def subject_clips(store: Store, subject: str, length: int, most: int) -> list[tuple[torch.Tensor, float]]:
    """Up to ``most`` clips of ``length`` frames spread evenly over a subject's runs, each with its run's
    background value: [(clip (1, 1, X, Y, Z, T), fill)]."""
    runs = store.manifest[store.manifest["subject"].astype(str) == subject]
    candidates = [(row.run_id, start, float(row.fill_value)) for row in runs.itertuples()
                  for start in range(0, int(row.n_frames) - length + 1, length)]
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(most, len(candidates))).round().astype(int))
    return [(clip_tensor(store, candidates[i][0], candidates[i][1], length)[None], candidates[i][2])
            for i in picks] if candidates else []


def attribute(model: ClassOutputs | dict[str, ClassOutputs], classes: list[str],
              clips_by_subject: dict[str, list[tuple[torch.Tensor, float]]], steps: int = 32) -> AttributionMaps:
    """Average IG maps per class over each subject's clips, then over subjects. ``model`` is one model for
    every subject or, for a cross-validated run, the model of each subject (the fold that tested it)."""
    per_subject = []
    for subject, clips in clips_by_subject.items():
        explained = model[subject] if isinstance(model, dict) else model
        explained.eval()
        maps = []
        for clip, fill in clips:
            per_class = [integrated_gradients(explained, clip, fill, c, steps) for c in range(len(classes))]
            a = torch.stack(per_class).numpy()  # (C, X, Y, Z, T)
            maps.append((a.sum(-1), np.abs(a).sum(-1), np.abs(a).sum(axis=(1, 2, 3))))
        per_subject.append([np.mean([m[k] for m in maps], axis=0) for k in range(3)])
    signed, absolute, profile = (np.mean([s[k] for s in per_subject], axis=0) for k in range(3))
    return AttributionMaps(classes, signed.astype(np.float32), absolute.astype(np.float32),
                           profile.astype(np.float32), list(clips_by_subject),
                           sum(len(c) for c in clips_by_subject.values()))


def roi_table(maps: AttributionMaps, atlas: Atlas) -> pd.DataFrame:
    """Mean |A| (over classes) and mean signed A per class in every ROI, ranked by mean |A|."""
    absolute = maps.absolute.mean(0).reshape(-1)
    table = atlas.table()
    table["mean_abs"] = [absolute[v].mean() if len(v) else np.nan for v in atlas.voxels]
    for k, cls in enumerate(maps.classes):
        signed = maps.signed[k].reshape(-1)
        table[f"mean_signed_{cls}"] = [signed[v].mean() if len(v) else np.nan for v in atlas.voxels]
    if atlas.networks is not None:
        table.insert(2, "network", atlas.networks)
    table = table.sort_values("mean_abs", ascending=False, na_position="last").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def network_table(rois: pd.DataFrame) -> pd.DataFrame | None:
    """Mean |A| per network (over its ROIs), ranked; None for an atlas without networks."""
    if "network" not in rois:
        return None
    table = rois.groupby("network", as_index=False).agg(mean_abs=("mean_abs", "mean"), n_rois=("name", "size"))
    return table.sort_values("mean_abs", ascending=False).reset_index(drop=True)


def write_outputs(maps: AttributionMaps, affine: np.ndarray, atlas: Atlas, out: Path) -> dict[str, Path]:
    """NIfTI maps, tables and PNGs into ``out``; returns what was written by name."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for k, cls in enumerate(maps.classes):
        for kind, volume in (("signed", maps.signed[k]), ("abs", maps.absolute[k])):
            path = out / f"attribution_{cls}_{kind}.nii.gz"
            nib.save(nib.Nifti1Image(volume, affine), path)
            written[f"{cls}_{kind}"] = path
    rois = roi_table(maps, atlas)
    write_csv_atomic(out / "roi_attribution.csv", rois)
    written["rois"] = out / "roi_attribution.csv"
    networks = network_table(rois)
    if networks is not None:
        write_csv_atomic(out / "network_attribution.csv", networks)
        written["networks"] = out / "network_attribution.csv"
    profile = pd.DataFrame(maps.time_profile.T, columns=[f"abs_{c}" for c in maps.classes])
    profile.insert(0, "frame", np.arange(len(profile)))
    write_csv_atomic(out / "time_profile.csv", profile)
    written["time_profile"] = out / "time_profile.csv"
    written.update(plot_maps(maps, affine, out / "figures"))
    written["time_profile_png"] = plot_time_profiles(maps, out / "figures" / "time_profile.png")
    return written


def plot_maps(maps: AttributionMaps, affine: np.ndarray, folder: Path) -> dict[str, Path]:
    """Per class: the signed map over the MNI template (three slices through its peak) and a glass brain
    of the absolute map, thresholded at its 99th percentile of brain values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import datasets, plotting

    folder.mkdir(parents=True, exist_ok=True)
    template = datasets.load_mni152_template(resolution=2)
    written = {}
    for k, cls in enumerate(maps.classes):
        signed, absolute = nib.Nifti1Image(maps.signed[k], affine), nib.Nifti1Image(maps.absolute[k], affine)
        peak = np.unravel_index(np.argmax(maps.absolute[k]), maps.absolute[k].shape)
        cut = nib.affines.apply_affine(affine, peak)
        nonzero = np.abs(maps.signed[k][maps.signed[k] != 0])
        limit = float(np.percentile(nonzero, 99.5)) if nonzero.size else 1.0
        path = folder / f"attribution_{cls}.png"
        display = plotting.plot_stat_map(signed, bg_img=template, cut_coords=cut, vmax=limit or None,
                                         threshold=float(np.percentile(nonzero, 90)) if nonzero.size else None,
                                         title=f"integrated gradients, {cls} (signed)")
        display.savefig(path, dpi=110)
        display.close()
        written[f"{cls}_png"] = path
        strong = maps.absolute[k][maps.absolute[k] > 0]
        path = folder / f"attribution_{cls}_glass.png"
        display = plotting.plot_glass_brain(absolute, threshold=float(np.percentile(strong, 99)) if strong.size
                                            else None, colorbar=True, plot_abs=False, cmap="hot",
                                            title=f"|integrated gradients|, {cls}")
        display.savefig(path, dpi=110)
        display.close()
        written[f"{cls}_glass_png"] = path
    plt.close("all")
    return written


def plot_time_profiles(maps: AttributionMaps, path: Path) -> Path:
    """Total |attribution| per clip frame, one line per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for k, cls in enumerate(maps.classes):
        ax.plot(np.arange(maps.time_profile.shape[1]), maps.time_profile[k], marker="o", label=cls)
    ax.set_xlabel("frame of the clip")
    ax.set_ylabel("Σ |attribution| over voxels")
    ax.set_title(f"attribution over time ({len(maps.subjects)} subjects, {maps.clips} clips)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def explain(target: str | Path, out: str | Path, config: ExperimentConfig | None = None,
            subjects: list[str] | None = None, clips: int = 4, steps: int = 32, atlas: str = "power264") -> dict:
    """Attribution maps of a fine-tuned run (its folder, or its ``model`` folder with ``config`` naming the
    store) on ``subjects`` (default: the run's test subjects, else every subject of the store), ``clips``
    clips each. A cross-validated run explains each subject with the model of the fold that tested it.
    Writes maps, tables and figures into ``out``; returns the summary also saved as JSON."""
    target = Path(target)
    folds = sorted(target.glob("fold-*/model/task.json"))
    run_dir = target if (target / "model" / "task.json").exists() or folds else None
    folders = [path.parent for path in folds] or [target / "model" if run_dir else target]
    if not (folders[0] / "task.json").exists():
        what = "not a fine-tuned run or its model folder (no task.json)"
        if (target / "config.yaml").exists():
            run = load_config(target / "config.yaml")
            what = f"a {run.task.kind} run with mode={run.mode}, which exports no network with a head (no task.json)"
        raise InputError(target, f"{what}; explain maps the predictions of classification, regression and task-"
                                 "state runs fine-tuned with mode full, prompt or lora")
    if config is None:
        if run_dir is None or not (run_dir / "config.yaml").exists():
            raise InputError(target, "a model folder alone does not say which store to read: give --config")
        config = load_config(run_dir / "config.yaml")
    if not config.data.stores:
        raise InputError("config", "data.stores is empty: give the store to explain on")
    if clips < 1 or steps < 2:
        raise InputError("explain", f"need at least 1 clip and 2 integration steps, got {clips} and {steps}")
    store = Store(config.data.stores[0].path)
    length = config.data.sequence_length
    models, tested_by = {}, {}
    for folder in folders:  # one model, or one per fold with the subjects it tested
        module, task = load_adapted(folder)
        check_stores_fit([store.location], module.encoder.config.img_size, str(folder))
        values = module.target.values
        classes = [task["label"] or "output"] if values else [str(c) for c in task["classes"]]
        models[folder] = ClassOutputs(module.encoder, module.head, binary=not values and len(classes) == 2)
        for subject in _subjects(store, folder.parent if run_dir else None, subjects if len(folders) == 1 else None):
            tested_by[subject] = folder
    chosen = [s.removeprefix("sub-") for s in subjects] if subjects else sorted(tested_by)
    if missing := sorted(set(chosen) - set(tested_by)):
        raise InputError(target, f"no fold of this cross-validated run tested subject(s) {missing}")
    clips_by_subject = {s: c for s in chosen if (c := subject_clips(store, s, length, clips))}
    if not clips_by_subject:
        raise InputError(store.location, f"no run of the chosen subjects holds one clip of {length} frames")
    maps = attribute({s: models[tested_by[s]] for s in clips_by_subject}, classes, clips_by_subject, steps)
    written = write_outputs(maps, store.grid_affine, load_atlas(atlas, store.grid), Path(out))
    top = pd.read_csv(written["rois"]).head(10)
    summary = {"model": str(folders[0]) if len(folders) == 1 else [str(f) for f in folders],
               "store": store.location, "task": task["kind"], "classes": classes,
               "subjects": maps.subjects, "clips": maps.clips, "clip_frames": length, "steps": steps,
               "baseline": "each run's background value (store fill_value) at every voxel and frame",
               "atlas": atlas, "top_rois": top[["rank", "name", "mean_abs"]].to_dict("records"),
               "files": {k: str(v) for k, v in written.items()}}
    write_json_atomic(Path(out) / "explain.json", summary)
    write_markdown_report(Path(out), _report_markdown(summary, top, Path(out)), "neurostorm attribution maps")
    return summary


def _report_markdown(summary: dict, top: pd.DataFrame, out: Path) -> str:
    """OUT/report.md: what was attributed, the figures and the ten ROIs of largest mean |attribution|."""
    lines = ["# Attribution maps (integrated gradients)", "",
             f"Model `{summary['model']}` ({summary['task']}); {len(summary['subjects'])} subjects, {summary['clips']} "
             f"clips of {summary['clip_frames']} frames, {summary['steps']} steps from {summary['baseline']}; "
             f"ROIs of `{summary['atlas']}`.", "",
             figure_paragraph(out), "",
             "| rank | ROI | mean abs(attribution) |", "|---|---|---|"]
    lines += [f"| {r['rank']} | {r['name']} | {r['mean_abs']:.3g} |" for r in top.to_dict("records")]
    return "\n".join(lines) + "\n"


def _subjects(store: Store, run_dir: Path | None, subjects: list[str] | None) -> list[str]:
    known = sorted(store.manifest["subject"].astype(str).unique())
    if subjects:
        wanted = [s.removeprefix("sub-") for s in subjects]
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise InputError(store.location, f"no runs of subjects {unknown} (the store has {len(known)} subjects)")
        return wanted
    split = run_dir / "split.json" if run_dir is not None else None
    if split is not None and split.exists():
        return [s for s in json.loads(split.read_text())["test"] if s in known]
    return known
