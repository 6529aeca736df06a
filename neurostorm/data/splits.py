"""Subject-level train/val/test splits: seeded, stratified for classification, saved and reused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from neurostorm.data.files import write_json_atomic
from neurostorm.errors import InputError

SPLITS = ("train", "val", "test")


def make_split(subjects: pd.DataFrame, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
               seed: int = 0, stratify: str | None = None) -> dict[str, list[str]]:
    """Split the unique subjects of ``subjects`` (a frame with a ``subject`` column).

    No subject lands in two splits; val and test are both non-empty whenever there are at least 3
    subjects (test never doubles as val). With ``stratify`` (a label column), class proportions are kept
    in every split where each class has enough subjects; otherwise the split falls back to unstratified.
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    per_subject = subjects.drop_duplicates("subject").set_index("subject")
    ids = np.asarray(sorted(per_subject.index))
    if len(ids) < 3:
        raise InputError("data.stores", f"{len(ids)} subject(s) to split; a train / validation / test split needs "
                                        "at least 3 (preprocess more subjects into the store)")
    strata = per_subject.loc[ids, stratify].astype(str).to_numpy() if stratify else None
    n_test = max(1, int(round(fractions[2] * len(ids))))
    n_val = max(1, int(round(fractions[1] * len(ids))))

    unstratified = []

    def cut(pool: np.ndarray, labels: np.ndarray | None, size: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        usable = labels is not None and min(np.unique(labels, return_counts=True)[1]) >= 2 and \
            size >= len(np.unique(labels)) and len(pool) - size >= len(np.unique(labels))
        if labels is not None and not usable:
            unstratified.append(name)
        rest, held = train_test_split(pool, test_size=size, random_state=seed, stratify=labels if usable else None)
        return rest, held

    rest, test = cut(ids, strata, n_test, "test")
    rest_strata = per_subject.loc[rest, stratify].astype(str).to_numpy() if stratify else None
    train, val = cut(rest, rest_strata, n_val, "val")
    if unstratified:
        warnings.warn(f"too few subjects per class of '{stratify}' to stratify the {' and '.join(unstratified)} "
                      "split; drawn unstratified", stacklevel=3)
    return {name: sorted(map(str, part)) for name, part in zip(SPLITS, (train, val, test), strict=True)}


def site_split(subjects: pd.DataFrame, test_sites: list[str], val_fraction: float, seed: int
               ) -> dict[str, list[str]]:
    """Leave-site-out: the subjects of ``test_sites`` are the test set; validation is a ``val_fraction``
    share of the other sites' subjects, drawn with ``seed``, training the rest. ``subjects`` needs a
    ``site`` column; a site it does not hold is an error naming the sites it has."""
    if "site" not in subjects.columns:
        raise InputError("data.test_sites", "the store's labels have no 'site' column (participants.tsv)")
    table = subjects.drop_duplicates("subject").astype({"subject": str, "site": str})
    known = sorted(table["site"].unique())
    unknown = sorted(set(map(str, test_sites)) - set(known))
    if unknown:
        raise InputError("data.test_sites", f"no site {', '.join(unknown)} in the data; its sites: {', '.join(known)}")
    held = table["site"].isin(set(map(str, test_sites)))
    rest = table.loc[~held, "subject"].to_numpy()
    if len(rest) < 2:
        raise InputError("data.test_sites", f"leaves {len(rest)} subject(s) outside the test sites to train on")
    val = set(np.random.default_rng(seed).choice(rest, max(1, int(round(val_fraction * len(rest)))), replace=False))
    return {"train": sorted(set(rest) - val), "val": sorted(val), "test": sorted(table.loc[held, "subject"])}


MIN_TEST_SUBJECTS = 2  # fewer leaves no metric with a confidence interval
FEW_TEST_SUBJECTS = 10  # fewer gives CIs too wide to compare methods by


def check_test_subjects(split: dict[str, list[str]], subjects: pd.DataFrame, fractions, stratify: str | None
                        ) -> None:
    """Refuse a split whose test subjects cannot give a metric with a CI (fewer than 2, or one class of the
    label); warn when they are fewer than 10. The remedy in both cases: more subjects, a larger test share,
    or cross-validation (``data.cv_folds``), which tests every subject once."""
    test, n = split["test"], subjects["subject"].nunique()
    remedy = "use more subjects, a larger test share in data.split_fractions, or data.cv_folds=k"
    where = "data.split_fractions"
    if len(test) < MIN_TEST_SUBJECTS:
        raise InputError(where, f"{list(fractions)} of {n} subjects leaves {len(test)} test subject(s); a metric "
                                f"with a 95 % CI needs at least {MIN_TEST_SUBJECTS}: {remedy}")
    if stratify:
        table = subjects.drop_duplicates("subject").astype({"subject": str}).set_index("subject")
        classes = table.loc[test, stratify].nunique()
        if classes < 2:
            raise InputError(where, f"the {len(test)} test subjects of {n} hold one class of '{stratify}'; "
                                    f"classification metrics need at least two: {remedy}")
    if len(test) < FEW_TEST_SUBJECTS:
        warnings.warn(f"only {len(test)} test subjects: 95 % CIs over so few are wide ({FEW_TEST_SUBJECTS} or more "
                      f"to compare methods); {remedy}", stacklevel=3)


def load_or_make_split(path: str | Path, subjects: pd.DataFrame, fractions=(0.7, 0.15, 0.15), seed: int = 0,
                       stratify: str | None = None) -> dict[str, list[str]]:
    """Reuse the split saved at ``path``, or make one and save it there (JSON, atomically). A split made here
    must leave test subjects enough for a metric with a CI (:func:`check_test_subjects`)."""
    path = Path(path)
    known = set(subjects["subject"].astype(str))
    if path.exists():
        saved = json.loads(path.read_text())
        split = {name: saved[name] for name in SPLITS}
        seen: set[str] = set()
        for name in SPLITS:
            overlap = seen & set(split[name])
            if overlap:
                raise InputError(path, f"subject(s) {sorted(overlap)} in more than one split")
            seen |= set(split[name])
        if seen - known:
            raise InputError(path, f"split names subjects not in the data: {sorted(seen - known)[:5]}")
        if known - seen:
            warnings.warn(f"{path}: {len(known - seen)} subjects in the data are in no split", stacklevel=2)
        return split
    split = make_split(subjects, fractions, seed, stratify)
    check_test_subjects(split, subjects, fractions, stratify)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**split, "seed": seed, "fractions": list(fractions), "stratify": stratify})
    return split


def random_splits(labels: pd.Series, n_splits: int, train_size: int, seed: int = 0, stratify: bool = False
                  ) -> list[dict[str, list[str]]]:
    """``n_splits`` seeded draws of ``train_size`` training subjects from ``labels`` (subject → label), the
    rest tested, each subject whole in one side (the repeated-split protocol of frozen-feature benchmarks);
    with ``stratify`` each draw keeps the label's class shares. A class too small to appear on both sides is
    refused naming it."""
    subjects = np.asarray(labels.index.astype(str))
    n_test = len(subjects) - train_size
    if n_splits < 1 or train_size < 2 or n_test < MIN_TEST_SUBJECTS:
        raise InputError("--splits", f"random:{n_splits} with {train_size} training subjects of {len(subjects)} "
                                     f"leaves {n_test} to test; need at least 1 split, 2 training and "
                                     f"{MIN_TEST_SUBJECTS} test subjects")
    strata = labels.astype(str).to_numpy() if stratify else None
    if stratify:
        counts = labels.astype(str).value_counts()
        if counts.min() < 2 or len(counts) > min(train_size, n_test):
            raise InputError("--splits", f"class {counts.idxmin()!r} of {labels.name!r} has {counts.min()} "
                                         f"subject(s) and {len(counts)} classes must fit in {n_test} test "
                                         "subjects: stratified random splits need more subjects per class (or a "
                                         "larger test share in data.split_fractions)")
    draws = []
    for k in range(n_splits):
        train, test = train_test_split(subjects, train_size=train_size, stratify=strata, random_state=seed + k + 1)
        draws.append({"train": sorted(train), "test": sorted(test)})
    return draws
