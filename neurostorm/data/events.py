"""BIDS events → a condition per frame → clips that lie inside one block (task-state labels).

A frame acquired at time t = i·TR (seconds from the first volume, the time axis of BIDS onsets and of our
resampled stores) takes the condition of the event covering t − delay; ``delay`` (default 0) can shift
labels by the haemodynamic lag. Clips of ``length`` frames are kept only where every frame has the same
condition, so a clip never straddles two blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neurostorm.data.ingest import parse_entities
from neurostorm.errors import InputError

MATCH_ENTITIES = ("sub", "ses", "task", "run")


def read_events(path: str | Path) -> pd.DataFrame:
    """A BIDS ``*_events.tsv``: onset and duration in seconds, condition in ``trial_type``."""
    path = Path(path)
    try:
        events = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (OSError, pd.errors.ParserError) as err:
        raise InputError(path, f"not a readable events table ({err})") from err
    missing = {"onset", "duration", "trial_type"} - set(events.columns)
    if missing:
        raise InputError(path, f"events table lacks column(s) {sorted(missing)}")
    events = events.dropna(subset=["onset", "duration", "trial_type"])
    if (events["duration"] < 0).any() or (events["onset"] < 0).any():
        raise InputError(path, "negative onset or duration")
    return events.astype({"trial_type": str}).sort_values("onset").reset_index(drop=True)


def events_for(source: str | Path, roots: list[str | Path]) -> Path | None:
    """The events file of a BOLD run: same subject, session, task and run entities, searched next to the
    run and under each root (a raw BIDS dataset, say); None when there is none."""
    wanted, _ = parse_entities(Path(source))
    key = tuple(wanted.get(e) for e in MATCH_ENTITIES)
    for root in [Path(source).parent, *map(Path, roots)]:
        for candidate in sorted(root.rglob("*_events.tsv")) if root.is_dir() else []:
            found, suffix = parse_entities(candidate)
            if suffix == "events" and tuple(found.get(e) for e in MATCH_ENTITIES) == key:
                return candidate
    return None


def frame_conditions(events: pd.DataFrame, n_frames: int, tr: float, delay: float = 0.0) -> np.ndarray:
    """(n_frames,) object array: the condition of each frame, None where no event covers it."""
    times = np.arange(n_frames) * tr - delay
    labels = np.full(n_frames, None, dtype=object)
    for onset, duration, condition in events[["onset", "duration", "trial_type"]].itertuples(index=False):
        labels[(times >= onset - 1e-6) & (times < onset + duration - 1e-6)] = condition
    return labels


def condition_clips(conditions: np.ndarray, length: int, stride: int | None = None,
                    exclude: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """(start, condition) of every clip of ``length`` frames lying inside one block of one condition."""
    stride = stride or length
    clips = []
    start = 0
    while start < len(conditions):
        condition, end = conditions[start], start
        while end < len(conditions) and conditions[end] == condition:
            end += 1
        if condition is not None and condition not in exclude:
            clips += [(s, condition) for s in range(start, end - length + 1, stride)]
        start = end
    return clips


def events_from_volume_labels(conditions: list[str], tr: float, rest: str = "rest") -> pd.DataFrame:
    """BIDS events (onset, duration, trial_type) from one condition per volume (PyMVPA / nilearn-style
    attribute files); runs of the same condition become one event, ``rest`` volumes none."""
    rows, start = [], 0
    for i in range(1, len(conditions) + 1):
        if i == len(conditions) or conditions[i] != conditions[start]:
            if conditions[start] != rest:
                rows.append((start * tr, (i - start) * tr, conditions[start]))
            start = i
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])
