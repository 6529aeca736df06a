"""The Triton selective scan against the plain float64 loop (values and all six gradients), the Mamba layer
on the Triton backend against the numba one, and which scan each backend runs where. Without a GPU the
kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest)."""

import pytest
import torch

from neurostorm.models import mamba
from neurostorm.models.mamba import Mamba, scan_backend
from neurostorm.models.scan import selective_scan_reference

triton = pytest.importorskip("triton")
from neurostorm.models.scan_triton import selective_scan_triton  # noqa: E402

NAMES = ["u", "delta", "A", "B", "C", "D"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def layer_like_inputs(n_seq: int, channels: int, length: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Inputs laid out as the Mamba layer passes them: u, Δ as (Bs, E, L) views of (Bs, L, E) tensors, B and
    C as column slices of one x_proj output (Bs, L, R + 2N); A (E, N) float32, D (E,) float32."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n_seq, length, channels, generator=g).to(dtype).transpose(1, 2)
    delta = (torch.rand(n_seq, length, channels, generator=g) * 0.5 + 0.01).to(dtype).transpose(1, 2)
    projection = torch.randn(n_seq, length, 3 + 32, generator=g).to(dtype)
    B, C = projection[..., 3:19], projection[..., 19:]
    A = -torch.rand(channels, 16, generator=g) * 4 - 0.05
    D = torch.randn(channels, generator=g)
    return [t.to(DEVICE) for t in (u, delta, A, B, C, D)]


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double().cpu(), reference.detach().cpu()
    return float((value - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def compare_with_float64_loop(inputs: list[torch.Tensor], tolerance: float, grad_tolerance: float) -> None:
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = selective_scan_triton(*leaves)
    assert y.dtype == inputs[0].dtype and y.shape == inputs[0].shape
    exact = [t.detach().double().cpu().requires_grad_() for t in inputs]  # the same (rounded) values
    y_ref = selective_scan_reference(*exact)
    assert relative_error(y, y_ref) <= tolerance
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, upstream.to(y.dtype).to(y.device))
    grads_ref = torch.autograd.grad(y_ref, exact, upstream.to(y.dtype).double())
    for name, grad, grad_ref, leaf in zip(NAMES, grads, grads_ref, leaves, strict=True):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape, name
        if grad_ref.abs().max() > 0:  # dA is exactly 0 at L = 1 (the state before the first step is 0)
            assert relative_error(grad, grad_ref) <= grad_tolerance, name


@pytest.mark.parametrize("length, channels", [(1, 8), (17, 72), (64, 8), (130, 72), (256, 8)])
def test_float32_values_and_gradients_match_the_float64_loop(length, channels):
    # accumulated in float32: errors of a few 1e-7 of the largest value were measured; 2e-5 allowed
    compare_with_float64_loop(layer_like_inputs(2, channels, length, torch.float32), 2e-5, 2e-5)


@pytest.mark.parametrize("length, channels", [(17, 8), (130, 72)])
def test_bfloat16_inputs_are_accumulated_in_float32(length, channels):
    # against the loop on the same bfloat16 values: what is left is the rounding of y and the gradients
    # to bfloat16 (8 bits of mantissa, 4e-3 relative)
    compare_with_float64_loop(layer_like_inputs(2, channels, length, torch.bfloat16), 1e-2, 2e-2)


def test_unsupported_state_sizes_and_dtypes_are_refused():
    u, delta, A, B, C, D = layer_like_inputs(1, 8, 4, torch.float32)
    with pytest.raises(ValueError, match="state sizes N in"):
        selective_scan_triton(u, delta, A[:, :12], B[..., :12], C[..., :12], D)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        selective_scan_triton(u.double(), delta.double(), A, B.double(), C.double(), D)


def test_mamba_layer_on_triton_matches_the_numba_backend_on_the_same_weights():
    torch.manual_seed(0)
    layer = Mamba(16)
    x = torch.randn(3, 40, 16, requires_grad=True)
    outputs, grads = [], []
    for backend in ("torch", "triton"):
        layer.backend = backend
        out = layer(x)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [x, *layer.parameters()]))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for triton_grad, numba_grad in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(triton_grad, numba_grad, rtol=1e-3, atol=1e-4)


def test_auto_on_cuda_takes_mamba_ssm_else_triton_and_never_the_cpu_kernel(monkeypatch):
    monkeypatch.setattr(mamba, "mamba_ssm_available", lambda: False)
    assert scan_backend("auto", "cuda") == "triton"
    assert mamba.SCANS[scan_backend("auto", "cuda")] is mamba._triton_selective_scan
    monkeypatch.setattr(mamba, "mamba_ssm_available", lambda: True)
    assert scan_backend("auto", "cuda") == "cuda"
    assert scan_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="backend='torch' is the CPU kernel"):
        scan_backend("torch", "cuda")
    monkeypatch.setattr(mamba, "mamba_ssm_available", lambda: False)
    monkeypatch.setattr(mamba, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="install triton"):
        scan_backend("auto", "cuda")
    with pytest.raises(ValueError, match="needs the mamba-ssm package"):
        scan_backend("cuda", "cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(mamba, "triton_available", lambda: True)
    with pytest.raises(ValueError, match="backend='triton' needs"):
        scan_backend("triton", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        scan_backend("fast", "cpu")


def test_an_encoder_on_triton_with_checkpointing_matches_numba_on_the_same_weights():
    from neurostorm.models import build_model

    torch.manual_seed(0)
    # narrow, on 24³ voxels: 4³ tokens in three stages (shifted 4×4×4×4 windows of 256 tokens, a merge, the
    # whole last stage), so Triton's interpreter runs every kind of block in seconds, not minutes
    small = {"embed_dim": 8, "img_size": (24, 24, 24), "depths": (2, 2, 2)}
    reference = build_model("neurostorm-tiny", **small, backend="torch")
    on_triton = build_model("neurostorm-tiny", **small, backend="triton", checkpoint_blocks=True)
    on_triton.load_state_dict(reference.state_dict())
    x = torch.randn(1, 1, 24, 24, 24, 4)
    results = []
    for encoder in (reference, on_triton):
        out = encoder.encode(x)
        results.append((out, torch.autograd.grad(out.square().sum(), list(encoder.parameters()))))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    for triton_grad, numba_grad in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(triton_grad, numba_grad, rtol=2e-3, atol=2e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check measures for minutes")
def test_the_gpu_check_runs_its_parity_rows_without_a_gpu_and_says_so():
    from benchmarks import gpu

    parity, note = gpu.run(quick=True)
    assert parity["worst"] < 2e-5 and set(parity) >= {"y", "du", "ddelta", "dA", "dB", "dC", "dD"}
    assert note["note"] == "GPU figures: not measured (no CUDA device)"


@pytest.mark.skipif(mamba.mamba_ssm_available(), reason="the cuda backend runs here")
def test_a_configured_backend_that_cannot_run_here_is_one_line_before_training(labelled_store, tmp_path, capsys):
    from neurostorm.cli import main

    argv = ["finetune", "--config", "tiny", f"data.stores=[{labelled_store}]", "task.label=sex", "optim.epochs=1",
            "model.overrides={backend: cuda}", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert errors == ["neurostorm finetune: model.overrides.backend: backend='cuda' needs the mamba-ssm package "
                      "and CUDA tensors"]
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
