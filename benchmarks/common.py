"""What every benchmark shares: timing, memory, child processes and the record format.

Each measurement runs in a fresh child process (``python -m benchmarks --child [SUITE, FUNCTION, ARGS...]``) so that its
peak RSS is its own. A record is a dict with ``name``, ``shape``, ``seconds`` (median of repeats after one
warm-up call), ``peak_rss_mib`` (the child's peak), ``extra_mib`` (peak above the RSS once inputs were
built) and ``ratio``, the figure a suite compares by, with ``ratio_means`` saying what it is (e.g. how many
times slower than our fused scan a scan is; achieved over measured matmul GFLOP/s for the encoder).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable


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
