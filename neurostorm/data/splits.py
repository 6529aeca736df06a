"""Subject-level train/val/test splits: seeded, stratified for classification, saved and reused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from neurostorm.data.store import write_json_atomic
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
        raise ValueError(f"need at least 3 subjects to split, got {len(ids)}")
    strata = per_subject.loc[ids, stratify].astype(str).to_numpy() if stratify else None
    n_test = max(1, int(round(fractions[2] * len(ids))))
    n_val = max(1, int(round(fractions[1] * len(ids))))

    def cut(pool: np.ndarray, labels: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray]:
        usable = labels is not None and min(np.unique(labels, return_counts=True)[1]) >= 2 and \
            size >= len(np.unique(labels)) and len(pool) - size >= len(np.unique(labels))
        if labels is not None and not usable:
            warnings.warn(f"too few subjects per class of '{stratify}' to stratify; splitting unstratified",
                          stacklevel=3)
        rest, held = train_test_split(pool, test_size=size, random_state=seed, stratify=labels if usable else None)
        return rest, held

    rest, test = cut(ids, strata, n_test)
    rest_strata = per_subject.loc[rest, stratify].astype(str).to_numpy() if stratify else None
    train, val = cut(rest, rest_strata, n_val)
    return {name: sorted(map(str, part)) for name, part in zip(SPLITS, (train, val, test), strict=True)}


def load_or_make_split(path: str | Path, subjects: pd.DataFrame, fractions=(0.7, 0.15, 0.15), seed: int = 0,
                       stratify: str | None = None) -> dict[str, list[str]]:
    """Reuse the split saved at ``path``, or make one and save it there (JSON, atomically)."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**split, "seed": seed, "fractions": list(fractions), "stratify": stratify})
    return split
