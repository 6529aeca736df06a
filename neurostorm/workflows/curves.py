"""Label efficiency: every method of a comparison at several numbers of labelled training subjects.

``neurostorm compare … --train-subjects 4,8,16,all --repeats R`` fixes one split (the comparison's
``split.json``), then for each size draws R seeded subsamples of its training subjects (stratified by the
label for classification, at least one subject of every class), keeps the validation and test subjects,
and runs the whole comparison on each (``OUT/curve/n<size>-r<repeat>/``, an ordinary compare folder).
Sizes are counts or fractions of the training subjects (``0.25,0.5,all``). A size larger than the training
set, or too small to hold every class, is skipped with a warning and a row in the curve saying why.

``OUT/curve.csv``: one row per size × repeat × method (headline metric, its 95 % CI over test subjects);
``OUT/curve_differences.csv``: each method minus the first one on the same test subjects, per size and
repeat (paired bootstrap); ``OUT/curve.png``: the headline metric against labelled subjects, one line per
method (mean over repeats) with a band from the repeats' mean CI bounds and a dot per repeat.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from neurostorm.data.files import write_csv_atomic, write_json_atomic
from neurostorm.data.splits import load_or_make_split
from neurostorm.errors import InputError
from neurostorm.tasks import task_family
from neurostorm.train.config import ExperimentConfig
from neurostorm.train.data import open_store, subjects_table
from neurostorm.workflows.compare import Method, compare, paired_differences


def parse_sizes(text: str) -> list[float | int | None]:
    """``"4,8,all"`` → [4, 8, None]; ``"0.25,0.5,1.0"`` → fractions (a float ≤ 1); None means all."""
    sizes: list[float | int | None] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        try:
            value: float | int | None = None if word == "all" else float(word) if "." in word else int(word)
        except ValueError:
            raise InputError("--train-subjects", f"{word!r} is not a count, a fraction or 'all'") from None
        if value is not None and (value <= 0 or (isinstance(value, float) and value > 1)):
            raise InputError("--train-subjects", f"{word}: a count must be ≥ 1 and a fraction in (0, 1]")
        sizes.append(value)
    if not sizes:
        raise InputError("--train-subjects", "no size given")
    return sizes


def subsample(train: list[str], labels: pd.Series | None, size: int, seed: list[int]) -> list[str]:
    """``size`` of the ``train`` subjects, drawn with ``seed``; with ``labels`` (subject → class) every class
    keeps at least one subject and the rest follows the class proportions."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return sorted(rng.choice(train, size, replace=False).tolist())
    by_class = {c: sorted(s for s in train if labels[s] == c) for c in sorted(set(labels[train]))}
    share = {c: len(members) / len(train) * size for c, members in by_class.items()}
    counts = dict.fromkeys(by_class, 1)
    while sum(counts.values()) < size:  # the next subject goes to the class furthest below its share
        open_classes = [c for c in by_class if counts[c] < len(by_class[c])]
        counts[max(open_classes, key=lambda c: share[c] - counts[c])] += 1
    chosen = [s for c, members in by_class.items() for s in rng.choice(members, counts[c], replace=False)]
    return sorted(chosen)


def label_efficiency(config: ExperimentConfig, methods: list[Method], out: str | Path,
                     sizes: list[float | int | None], repeats: int = 1, progress: bool = True) -> pd.DataFrame:
    """Run the comparison at every training size and repeat; returns the curve table (also written)."""
    if repeats < 1:
        raise InputError("--repeats", f"must be at least 1, got {repeats}")
    kind, label = config.task.kind, config.task.label
    family = task_family(kind)
    if not family.subject_labels:
        raise InputError("--train-subjects", "label-efficiency curves subsample labelled subjects: they are for "
                                             "classification and regression")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = open_store(config.data.stores[0].path, config)
    subjects = subjects_table(store).dropna(subset=[label]) if label in store.manifest else None
    if subjects is None:
        raise InputError(store.location, f"no label column {label!r} in the store")
    stratify = family.stratify_by(config)
    split = load_or_make_split(out / "split.json", subjects, config.data.split_fractions, config.trainer.seed,
                               stratify)
    labels = subjects.set_index("subject")[label].astype(str) if stratify else None
    n_classes = labels[split["train"]].nunique() if labels is not None else 1
    shared = dataclasses.replace(config.data, roi_dir=config.data.roi_dir or str(out / "roi"))
    metric, rows, differences = family.headline, [], []
    plan = []  # (size as asked, subjects, why it cannot run or "")
    for size in sizes:
        n = len(split["train"]) if size is None else int(round(size * len(split["train"]))) \
            if isinstance(size, float) else size
        why = (f"{n} training subjects asked, the split has {len(split['train'])}" if n > len(split["train"]) else
               f"{n} subjects cannot hold all {n_classes} classes" if n < n_classes else "")
        plan.append(("all" if size is None else size, n, why))
    if all(why for _, _, why in plan):
        raise InputError("--train-subjects", "no size can run: " + "; ".join(why for _, _, why in plan))
    for asked, n, why in plan:
        if why:
            warnings.warn(f"--train-subjects {asked}: skipped: {why}", stacklevel=2)
            rows.append({"train_subjects": n, "repeat": None, "method": None, "note": f"skipped: {why}"})
            continue
        for repeat in range(repeats if n < len(split["train"]) else 1):  # all subjects: one draw is every draw
            folder = out / "curve" / f"n{n}-r{repeat}"
            chosen = subsample(split["train"], labels, n, [config.trainer.seed, n, repeat])
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "split.json", {**split, "train": chosen})
            run = dataclasses.replace(config, data=dataclasses.replace(shared, split_file=str(folder / "split.json")))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*subjects in the data are in no split")
                table = compare(run, methods, folder, progress=progress)
            for row in table.to_dict("records"):
                rows.append({"train_subjects": n, "repeat": repeat, "method": row["method"],
                             **{k: row.get(k) for k in (metric, f"{metric}_ci_low", f"{metric}_ci_high")},
                             "note": row.get("note", "")})
            pairs = [(m.label, methods[0].label) for m in methods[1:]]
            differences += [{"train_subjects": n, "repeat": repeat, **d} for d in paired_differences(table, kind,
                                                                                                   pairs)]
    curve = pd.DataFrame(rows)
    write_csv_atomic(out / "curve.csv", curve)
    write_csv_atomic(out / "curve_differences.csv", pd.DataFrame(differences))
    plot_curve(curve, metric, out / "curve.png")
    return curve


def curve_means(curve: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """(headline metric, its mean over repeats as a table: one row per training size, one column per method)."""
    metric = next(c for c in curve.columns if c not in ("train_subjects", "repeat", "method", "note"))
    means = curve.dropna(subset=["method"]).groupby(["train_subjects", "method"], sort=False)[metric].mean()
    return metric, means.unstack("method")


def plot_curve(curve: pd.DataFrame, metric: str, path: Path) -> Path:
    """Headline metric against labelled training subjects, one line (mean over repeats) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ran = curve.dropna(subset=["method"])
    for method, rows in ran.groupby("method", sort=False):
        by_size = rows.groupby("train_subjects")
        mean = by_size[metric].mean()
        line = ax.plot(mean.index, mean.to_numpy(), marker="o", label=method)[0]
        ax.fill_between(mean.index, by_size[f"{metric}_ci_low"].mean(), by_size[f"{metric}_ci_high"].mean(),
                        color=line.get_color(), alpha=0.15)
        ax.scatter(rows["train_subjects"], rows[metric], color=line.get_color(), s=10, alpha=0.6)
    ax.set_xlabel("labelled training subjects")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (test subjects)")
    ax.set_title(f"label efficiency (up to {ran['repeat'].nunique()} repeat(s) per size; bands: mean 95 % CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

