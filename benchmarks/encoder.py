"""Encoder and selective-scan cost on this machine's CPU: time and peak memory.

Every measurement runs in a fresh child process, so its peak RSS is its own: the NeuroSTORM base and tiny
encoders at batch 1 and 2, forward (inference) and forward+backward (training step without optimiser);
and the selective scan alone at the first stage's shape (320 windows × 256 tokens, E = 72, N = 16 per
base sample), our fused kernel against a plain sequential PyTorch loop (run on a quarter of the windows,
as it is slow). Times are medians over repeats after one warm-up call (which compiles the kernels).

    python -m benchmarks.encoder [--repeats 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _time(step, repeats: int) -> list[float]:
    step()  # warm-up: compiles the numba kernels, fills allocator caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure_encoder(model: str, batch: int, mode: str, repeats: int) -> dict:
    import torch

    from neurostorm import build_model

    torch.manual_seed(0)
    encoder = build_model(f"neurostorm-{model}")
    c = encoder.config
    x = torch.randn(batch, 1, *c.img_size, c.frames)
    baseline = _rss_mib()

    def forward():
        encoder.eval()
        with torch.inference_mode():
            encoder.encode(x)

    def train_step():
        encoder.train()
        encoder.zero_grad(set_to_none=True)
        encoder.encode(x).square().mean().backward()

    times = _time(forward if mode == "forward" else train_step, repeats)
    return {"name": f"encoder-{model}-{mode}", "shape": [batch, 1, *c.img_size, c.frames],
            "seconds": statistics.median(times), "clips_per_s": batch / statistics.median(times),
            "peak_rss_mib": _peak_mib(), "extra_mib": _peak_mib() - baseline, "threads": torch.get_num_threads()}


def measure_scan(kind: str, windows: int, repeats: int) -> dict:
    import torch

    from neurostorm.models.scan import selective_scan, selective_scan_reference

    g = torch.Generator().manual_seed(0)
    channels, length, states = 72, 256, 16
    inputs = [torch.randn(windows, channels, length, generator=g),
              torch.rand(windows, channels, length, generator=g) * 0.1 + 1e-3,
              -torch.rand(channels, states, generator=g) * 4,
              torch.randn(windows, length, states, generator=g), torch.randn(windows, length, states, generator=g),
              torch.randn(channels, generator=g)]
    inputs = [t.requires_grad_() for t in inputs]
    scan = selective_scan if kind == "fused" else selective_scan_reference
    baseline = _rss_mib()

    def step():
        for t in inputs:
            t.grad = None
        scan(*inputs).sum().backward()

    times = _time(step, repeats)
    return {"name": f"scan-{kind}-fwd+bwd", "shape": [windows, channels, length, states],
            "seconds": statistics.median(times), "peak_rss_mib": _peak_mib(), "extra_mib": _peak_mib() - baseline,
            "threads": torch.get_num_threads()}


CASES = [("encoder", m, b, mode) for m in ("tiny", "base") for b in (1, 2) for mode in ("forward", "train")]


def run_child(case: tuple, repeats: int) -> dict:
    spec = json.dumps([*case, repeats])
    child = subprocess.run([sys.executable, "-m", "benchmarks.encoder", "--child", spec], check=True,
                           capture_output=True, text=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, metavar="OUT.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest, repeats = json.loads(args.child)
        result = measure_encoder(*rest, repeats) if kind == "encoder" else measure_scan(*rest, repeats)
        print(json.dumps(result))
        return
    results = [run_child(case, args.repeats) for case in CASES]
    fused = run_child(("scan", "fused", 320), args.repeats)
    loop = run_child(("scan", "loop", 80), 1)
    loop_full = 4 * loop["seconds"]  # the loop's cost grows linearly in windows
    fused["ratio_vs_loop"] = loop_full / fused["seconds"]
    results += [fused, loop]
    print(f"{'measurement':28s} {'shape':26s} {'seconds':>8s} {'clips/s':>8s} {'peak MiB':>9s} {'extra MiB':>9s}")
    for r in results:
        rate = f"{r['clips_per_s']:8.2f}" if "clips_per_s" in r else f"{'':8s}"
        print(f"{r['name']:28s} {'×'.join(map(str, r['shape'])):26s} {r['seconds']:8.3f} {rate} "
              f"{r['peak_rss_mib']:9.0f} {r['extra_mib']:9.0f}")
    print(f"fused scan vs sequential loop at 320 windows (loop timed on 80, ×4): {loop_full:.2f} s vs "
          f"{fused['seconds']:.3f} s = {fused['ratio_vs_loop']:.0f}× faster")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
