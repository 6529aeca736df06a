"""``neurostorm finetune``: a task family trained and tested on one split, or cross-validated.

The settings are checked against the family (:mod:`neurostorm.tasks`) before anything is written; a refused
run leaves no folder behind. Cross-validation runs every fold as an ordinary run in RUN/fold-k and scores the
folds' test rows together, so every subject is tested once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from neurostorm.data.files import write_json_atomic
from neurostorm.data.splits import site_split
from neurostorm.errors import InputError
from neurostorm.evaluation.run_report import write_run_report
from neurostorm.tasks import TaskFamily, task_family
from neurostorm.train.config import ExperimentConfig
from neurostorm.train.data import open_store
from neurostorm.train.trainer import check_model_init, nothing_left_if_refused, resume_path, start_run


def finetune(config: ExperimentConfig, run_dir: str | Path, resume: bool = False) -> dict:
    """Adapt an encoder (``config.mode``: full, prompt, lora or probe) or train a baseline for the task family
    of ``config.task.kind``; test on the held-out subjects. Refused for bad input before anything is left in a
    new ``run_dir``."""
    with nothing_left_if_refused(run_dir) as folder:
        family = task_family(config.task.kind)
        check_settings(config, family)
        check_model_init(config.model.init)
        if config.data.cv_folds > 1 or config.data.cv_by_site:
            metrics = cross_validate(config, folder)
        else:
            metrics = family.run(config, start_run(config, folder), resume_path(folder, resume))
    if (folder / "metrics.json").exists():  # report.md and report.html of the run
        write_run_report(folder, f"neurostorm finetune --config {folder / 'config.yaml'} --out {folder}")
    return metrics


def check_settings(config: ExperimentConfig, family: TaskFamily) -> None:
    """Refuse settings the family, model and mode cannot run together, naming the setting."""
    model, mode = config.model.name, config.mode
    if config.head_standardise and not family.trains_head_on_clips(model, mode):
        raise InputError("head_standardise", "a standardising head is for a head trained on an encoder of clips "
                                             "(mode full, prompt or lora; a label or task state)")
    if config.data.test_sites and not family.subject_labels:
        raise InputError("data.test_sites", "leave-site-out splits subjects by site for subject labels "
                                            "(classification, regression); for task state use data.cv_by_site=true")
    if config.data.harmonize != "none" and not family.reads_fixed_features(model, mode):
        raise InputError("data.harmonize", "ComBat harmonises fixed features by site: the FC of connectome models "
                                           "and a frozen encoder's embeddings (mode=probe), for subject labels; "
                                           "an encoder adapted on clips reads voxels")
    if config.pooling != "mean" and mode != "probe":
        raise InputError("config", f"pooling={config.pooling} pools a frozen encoder's runs: use it with mode=probe")
    if config.probe_reads_tokens and (mode != "probe" or not family.trains_head_on_clips(model, "full")):
        raise InputError("config", f"probe={config.probe} and probe_stage choose the head of mode=probe over an "
                                   "encoder's tokens, for a label or task state"
                                   + ("" if mode == "probe" else f"; mode={mode} trains the encoder itself"))
    if not family.model_applies(model, mode):
        raise InputError("config", f"{model} reads connectivity: it predicts classification or "
                                   "regression labels with mode=full")


def cv_splits(subjects: pd.DataFrame, folds: int, val_fraction: float, seed: int, stratify: str | None
              ) -> list[dict[str, list[str]]]:
    """k folds of subjects: each fold's subjects are the test set once; val is drawn from the rest. Classes
    are balanced across folds when ``stratify`` names a label; with a ``site`` column no site is split."""
    from sklearn.model_selection import StratifiedGroupKFold

    table = subjects.drop_duplicates("subject").reset_index(drop=True)
    groups = table["site"].astype(str) if "site" in table else table["subject"].astype(str)
    labels = table[stratify].astype(str) if stratify else pd.Series(np.zeros(len(table), dtype=int))
    if groups.nunique() < folds:
        raise InputError("config", f"{folds} folds need at least {folds} groups (subjects or sites)")
    out = []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for rest, test in splitter.split(table, labels, groups):
        rest_ids = table["subject"].iloc[rest].astype(str).to_numpy()
        rng = np.random.default_rng([seed, len(out)])
        val = set(rng.choice(rest_ids, max(1, int(round(val_fraction * len(rest_ids)))), replace=False))
        out.append({"train": sorted(set(rest_ids) - val), "val": sorted(val),
                    "test": sorted(table["subject"].iloc[test].astype(str))})
    return out


def cross_validate(config: ExperimentConfig, run_dir: str | Path) -> dict:
    """Run every fold in RUN/fold-k and score the folds' test rows together (each subject tested once; a
    retrieval query ranked within its own fold)."""
    family = task_family(config.task.kind)
    run_dir = start_run(config, run_dir)
    store = open_store(config.data.stores[0].path, config)
    stratify = family.stratify_by(config)
    subjects = store.manifest.astype({"subject": str})
    if stratify:
        subjects = subjects.dropna(subset=[stratify])
    if config.data.cv_by_site:  # one fold per site: train on the others, test on it
        if "site" not in subjects.columns:
            raise InputError(store.location, "data.cv_by_site needs a 'site' column in the labels")
        folds = [site_split(subjects, [site], config.data.val_share, config.trainer.seed)
                 for site in sorted(subjects["site"].astype(str).unique())]
    else:
        folds = cv_splits(subjects, config.data.cv_folds, config.data.val_share, config.trainer.seed, stratify)
    frames = []
    for k, split in enumerate(folds):
        fold_dir = run_dir / f"fold-{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(fold_dir / "split.json", split)
        fold = dataclasses.replace(config, data=dataclasses.replace(
            config.data, cv_folds=0, cv_by_site=False, test_sites=[], split_file=str(fold_dir / "split.json")))
        metrics = finetune(fold, fold_dir)
        frames.append(pd.read_csv(fold_dir / family.predictions, dtype={"subject": str}).assign(fold=k))
    return family.score_folds(pd.concat(frames, ignore_index=True), {**metrics["task"], "folds": len(folds)},
                              run_dir, store)
