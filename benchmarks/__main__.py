"""``python -m benchmarks [--quick] [--json OUT.json]``: every suite, one table, one JSON record per line.
``python -m benchmarks --gpu --json OUT.json``: the prepared GPU check instead (``benchmarks/gpu.py``).

Suites: ``scan`` (the selective scan against a sequential loop and mambapy's parallel scan), ``encoder``
(base and tiny, clips/s, memory, GFLOP/s against the machine's matmul rate) and ``data`` (preprocessing
against a plain reslice, clip reads against the encoder's consumption). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import tempfile
import time
from pathlib import Path

SUITES = ("scan", "encoder", "data")


def machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def print_table(results: list[dict]) -> None:
    print(f"{'measurement':34s} {'shape':24s} {'seconds':>9s} {'clips/s':>8s} {'peak MiB':>9s} {'extra MiB':>9s} "
          f"{'ratio':>7s}  ratio means")
    for r in results:
        if "error" in r:
            print(f"{r['name']:34s} failed: {r['error']}")
            continue
        rate = r.get("clips_per_s", r.get("clips_per_s_cold"))
        ratio = r.get("ratio")
        print(f"{r['name']:34s} {'×'.join(map(str, r['shape'])):24s} {r['seconds']:9.3f} "
              f"{'' if rate is None else f'{rate:8.2f}':>8s} {r['peak_rss_mib']:9.0f} {r['extra_mib']:9.0f} "
              f"{'' if ratio is None or math.isnan(ratio) else f'{ratio:7.2f}':>7s}  {r.get('ratio_means', '')}")


def print_gpu_table(results: list[dict]) -> None:
    print(f"{'measurement':44s} {'shape':24s} {'seconds':>9s} {'clips/s':>8s} {'GPU MiB':>8s} {'ratio':>7s}  other")
    shown = {"name", "shape", "seconds", "clips_per_s", "gpu_peak_mib", "ratio", "ratio_means"}
    for r in results:
        rate, ratio = r.get("clips_per_s"), r.get("ratio")
        other = ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                          if k not in shown)
        print(f"{r['name']:44s} {'×'.join(map(str, r['shape'])):24s} {r['seconds']:9.4f} "
              f"{'' if rate is None else f'{rate:8.1f}':>8s} {r['gpu_peak_mib']:8.0f} "
              f"{'' if ratio is None else f'{ratio:7.2f}':>7s}  {other}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a shorter run for the data suite")
    parser.add_argument("--json", default=None, metavar="OUT.json")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    parser.add_argument("--workdir", type=Path, default=None, help="data suite files (default: a temporary folder)")
    parser.add_argument("--gpu", action="store_true", help="the prepared GPU check (benchmarks/gpu.py) instead")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpu:
        from benchmarks import gpu

        start = time.perf_counter()
        results = gpu.run(args.quick)
        print(f"machine: {machine()}; {time.perf_counter() - start:.0f} s")
        print_gpu_table(results)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
        return
    if args.child:
        suite, function, *rest = json.loads(args.child)
        print(json.dumps(getattr(importlib.import_module(f"benchmarks.{suite}"), function)(*rest)))
        return
    start, results = time.perf_counter(), []
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    for suite in suites:
        module = importlib.import_module(f"benchmarks.{suite}")
        if suite == "data":
            trains = [r for r in results if r["name"] == "encoder-base-fwd+bwd-b1" and "error" not in r]
            with tempfile.TemporaryDirectory() as scratch:
                results += module.run(args.quick, args.workdir or Path(scratch),
                                      trains[0]["clips_per_s"] if trains else None)
        else:
            results += module.run(args.quick)
    print(f"machine: {machine()}; {time.perf_counter() - start:.0f} s")
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
