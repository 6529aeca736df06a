"""The selective scan alone at the base encoder's shapes, ours against what a user would otherwise pick.

Stage 1 of one base sample: 320 windows × 256 tokens, E = 72 channels, N = 16 states; stage 3: 5 windows ×
256 tokens, E = 288. Scans:

- ``fused``: our numba kernel (``neurostorm.models.scan.selective_scan``), vectorised over channels, the
  states of a window kept in a per-thread buffer and recomputed chunk by chunk in the backward pass; given
  u and delta as (W, E, L) views of (W, L, E) tensors, as the Mamba layer passes them;
- ``loop``: the recurrence as a plain sequential PyTorch loop over time (autograd through it);
- ``mambapy``: ``mambapy``'s selective scan (its parallel Blelloch scan), given inputs in its own (windows,
  L, E) layout; it materialises (windows, L, E, N) tensors. An optional dependency (``pip install
  mambapy``), skipped when absent.
"""

from __future__ import annotations

import importlib.util

from benchmarks.common import median_seconds, record, rss_mib, run_child, with_ratio

STAGES = {"stage1": (320, 72), "stage3": (5, 288)}  # windows, channels (E)
LENGTH, STATES = 256, 16
LOOP_WINDOWS = 80  # the sequential loop is timed on a quarter of stage 1's windows and scaled


def mambapy_scan(u, delta, A, B, C, D):  # noqa: N803 - the paper's names
    """mambapy's own selective scan (parallel scan over (windows, L, E, N) tensors); u, delta: (W, L, E)."""
    from mambapy.mamba import MambaBlock

    return MambaBlock.selective_scan(None, u, delta, A, B, C, D)  # uses no attribute of the block


def scan_inputs(windows: int, channels: int, requires_grad: bool):
    """Leaf tensors u, delta (W, L, E), A (E, N), B, C (W, L, N), D (E,)."""
    import torch

    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(windows, LENGTH, channels, generator=g),
              torch.rand(windows, LENGTH, channels, generator=g) * 0.1 + 1e-3,
              -torch.rand(channels, STATES, generator=g) * 4,
              torch.randn(windows, LENGTH, STATES, generator=g), torch.randn(windows, LENGTH, STATES, generator=g),
              torch.randn(channels, generator=g)]
    return [t.requires_grad_(requires_grad) for t in inputs]


def measure(kind: str, stage: str, mode: str, windows: int | None, repeats: int) -> dict:
    import torch

    from neurostorm.models.scan import selective_scan, selective_scan_reference

    scan = {"fused": selective_scan, "loop": selective_scan_reference, "mambapy": mambapy_scan}[kind]
    full_windows, channels = STAGES[stage]
    windows = windows or full_windows
    inputs = scan_inputs(windows, channels, requires_grad=mode == "fwd+bwd")
    baseline = rss_mib()

    def run_scan():
        u, delta, *rest = inputs
        if kind != "mambapy":  # (W, E, L) views
            u, delta = u.transpose(1, 2), delta.transpose(1, 2)
        return scan(u, delta, *rest)

    def step():
        if mode == "forward":
            with torch.no_grad():
                run_scan()
            return
        for t in inputs:
            t.grad = None
        run_scan().sum().backward()

    seconds = median_seconds(step, repeats)
    return record(f"scan-{stage}-{kind}-{mode}", [windows, LENGTH, channels, STATES], seconds, baseline,
                  windows_measured=windows)


def run(quick: bool) -> list[dict]:
    """Every scan at both stages, forward and forward+backward. ``ratio`` of a row: its seconds over our
    fused kernel's at the same shape (how many times faster ours is)."""
    repeats = 2 if quick else 3
    kinds = ["fused", "loop"] + (["mambapy"] if importlib.util.find_spec("mambapy") else [])
    results = []
    for stage, (windows, _) in STAGES.items():
        for mode in ("forward", "fwd+bwd"):
            rows = []
            for kind in kinds:
                subset = LOOP_WINDOWS if kind == "loop" and windows > LOOP_WINDOWS else None
                row = run_child("scan", "measure", kind, stage, mode, subset, 1 if kind == "loop" else repeats)
                if subset:  # a sequential loop's cost grows linearly in windows
                    row = {**row, "seconds": row["seconds"] * windows / subset, "shape": [windows, *row["shape"][1:]]}
                rows.append(row)
            results += [with_ratio(row, rows[0], "times slower than fused") for row in rows]
    return results
