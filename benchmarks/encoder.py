"""The NeuroSTORM encoder on this machine's CPU: time, clips/s, peak memory and arithmetic efficiency.

Base (96³ × 20) and tiny (48³ × 20) at batch 1 and 2, forward (inference) and forward+backward (a training
step without the optimiser), all cores. FLOPs: matrix products and convolutions as counted by PyTorch's
``FlopCounterMode``, plus the selective scans, which it cannot see inside our kernel, counted from each
Mamba layer's shapes at 8 FLOPs per (sequence, token, channel, state) forward and 16 more backward
(the backward recomputes the states, then runs the adjoint recurrence). The machine's reference is a
float32 2048³ matrix product; ``ratio`` = achieved GFLOP/s / that.
"""

from __future__ import annotations

from benchmarks.common import median_seconds, record, rss_mib, run_child

SCAN_FLOPS = {"forward": 8, "fwd+bwd": 24}  # per (sequence, token, channel, state)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def count_flops(encoder, x, mode: str) -> float:
    """FLOPs of one forward (or forward+backward) pass: counted products + the scans from hooks."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from neurostorm.models.mamba import Mamba

    scan_elements = []

    def hook(layer, args, _output):
        hidden = args[0]  # (sequences, L, d_model)
        scan_elements.append(hidden.shape[0] * hidden.shape[1] * layer.d_inner * layer.d_state)

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if isinstance(m, Mamba)]
    counter = FlopCounterMode(display=False)
    with counter:
        if mode == "forward":
            with torch.no_grad():
                encoder.encode(x)
        else:
            encoder.encode(x).square().mean().backward()
    for handle in handles:
        handle.remove()
    encoder.zero_grad(set_to_none=True)
    return counter.get_total_flops() + SCAN_FLOPS[mode] * sum(scan_elements)


def measure(model: str, batch: int, mode: str, repeats: int) -> dict:
    import torch

    from neurostorm import build_model

    torch.manual_seed(0)
    encoder = build_model(f"neurostorm-{model}")
    c = encoder.config
    x = torch.randn(batch, 1, *c.img_size, c.frames)
    encoder.train(mode != "forward")
    baseline = rss_mib()  # before any pass, so the extra memory counts the whole step
    flops = count_flops(encoder, x, mode)

    def forward():
        with torch.inference_mode():
            encoder.encode(x)

    def train_step():
        encoder.zero_grad(set_to_none=True)
        encoder.encode(x).square().mean().backward()

    seconds = median_seconds(forward if mode == "forward" else train_step, repeats)
    return record(f"encoder-{model}-{mode}-b{batch}", [batch, 1, *c.img_size, c.frames], seconds, baseline,
                  clips_per_s=batch / seconds, gflop=flops / 1e9, gflops_per_s=flops / seconds / 1e9)


def measure_matmul(repeats: int) -> dict:
    baseline = rss_mib()
    rate = matmul_gflops(repeats=repeats)
    return record("matmul-2048", [2048, 2048, 2048], 2 * 2048**3 / rate / 1e9, baseline, gflops_per_s=rate)


def run(quick: bool) -> list[dict]:
    repeats = 2 if quick else 3
    matmul = run_child("encoder", "measure_matmul", repeats)
    results = [matmul]
    for model in ("tiny", "base"):
        for batch in (1, 2):
            for mode in ("forward", "fwd+bwd"):
                row = run_child("encoder", "measure", model, batch, mode, repeats)
                results.append({**row, "ratio": row.get("gflops_per_s", float("nan")) / matmul["gflops_per_s"],
                                "ratio_means": "achieved / matmul GFLOP/s"})
    return results
