"""What every benchmark shares: timing, memory, child processes and the record format; the command line of
the studies (``recipe``, ``pooling``, ``background``, ``strd``: :func:`study`).

Each measurement runs in a fresh child process (``python -m benchmarks --child [SUITE, FUNCTION, ARGS...]``) so that its
peak RSS is its own. A record is a dict with ``name``, ``shape``, ``seconds`` (median of repeats after one
warm-up call), ``peak_rss_mib`` (the child's peak), ``extra_mib`` (peak above the RSS once inputs were
built) and ``ratio``, the figure a suite compares by, with ``ratio_means`` saying what it is (e.g. how many
times slower than our fused scan a scan is; achieved over measured matmul GFLOP/s for the encoder).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def median_seconds(step: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``step`` over ``repeats`` calls, after one untimed call (JIT, allocator caches)."""
    if warmup:
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def record(name: str, shape: list[int], seconds: float, baseline_rss: float, **extra) -> dict:
    import torch

    return {"name": name, "shape": shape, "seconds": seconds, "peak_rss_mib": peak_mib(),
            "extra_mib": peak_mib() - baseline_rss, "threads": torch.get_num_threads(), **extra}


def run_child(suite: str, function: str, *args) -> dict:
    """``benchmarks.<suite>.<function>(*args)`` in a fresh process; its record (or one naming the error)."""
    child = subprocess.run([sys.executable, "-m", "benchmarks", "--child", json.dumps([suite, function, *args])],
                           capture_output=True, text=True)
    if child.returncode != 0:
        return {"name": f"{suite}-{'-'.join(map(str, args))}", "shape": [], "seconds": float("nan"),
                "error": (child.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(child.stdout.strip().splitlines()[-1])


def with_ratio(result: dict, reference: dict, meaning: str) -> dict:
    """``result`` with ``ratio`` = its seconds / the reference's seconds, and what that ratio means."""
    return {**result, "ratio": result["seconds"] / reference["seconds"], "ratio_means": meaning}


def validation_by_epoch(run: Path):
    """A fine-tuning run's ``logs/metrics.csv`` as one row per epoch (a DataFrame): ``epoch`` (from 1),
    ``val_score``, ``val_balanced_accuracy``, ``val_auroc``, ``val_pearson_r`` (NaN where the task has none)
    and the epoch's ``train_loss``."""
    import pandas as pd

    log = pd.read_csv(run / "logs" / "metrics.csv")
    validated = log.dropna(subset=["val_score"]).reset_index(drop=True)
    columns = ["val_score", "val_balanced_accuracy", "val_auroc", "val_pearson_r"]
    table = validated.reindex(columns=columns).assign(epoch=validated.index + 1)
    return table.assign(train_loss=log["train_loss_epoch"].dropna().to_numpy()[:len(table)])


def seeds_and_epochs(epochs: int) -> Callable[[argparse.ArgumentParser], None]:
    """The options of a fine-tuning study: ``--seeds`` (runs per arm, default 3) and ``--epochs``."""
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seeds", type=int, default=3)
        parser.add_argument("--epochs", type=int, default=epochs)
    return options


@contextmanager
def study(doc: str, options: Callable[[argparse.ArgumentParser], object] = lambda parser: None
          ) -> Iterator[tuple[argparse.Namespace, Path, Path]]:
    """A study's command line (its ``options`` and ``--out``; the first line of ``doc`` as description):
    yields (arguments, the folder for cohorts and runs — ``--out`` or a temporary one, removed after — and the
    folder for its tables — ``--out`` or the current one); warnings are silenced and the wall time printed."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    options(parser)
    parser.add_argument("--out", default=None, help="folder for cohorts, runs and tables (default: a temporary "
                                                    "one; tables go to the current folder)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        yield args, Path(args.out or scratch), Path(args.out or ".")
    print(f"\n{time.perf_counter() - started:.0f} s")
