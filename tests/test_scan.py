"""The CPU selective scan against a plain sequential loop, and the Mamba layer's parameters."""

import pytest
import torch

from neurostorm.models.mamba import Mamba, mamba_ssm_available
from neurostorm.models.scan import selective_scan, selective_scan_reference


def scan_inputs(n_seq, channels, length, states, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n_seq, channels, length, generator=g, dtype=dtype)
    delta = torch.rand(n_seq, channels, length, generator=g, dtype=dtype) * 0.5 + 0.01
    A = -torch.rand(channels, states, generator=g, dtype=dtype) * 4 - 0.05
    B = torch.randn(n_seq, length, states, generator=g, dtype=dtype)
    C = torch.randn(n_seq, length, states, generator=g, dtype=dtype)
    D = torch.randn(channels, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


@pytest.mark.parametrize("shape", [(3, 5, 17, 4), (2, 8, 1, 16), (4, 6, 64, 16), (1, 3, 256, 16), (2, 7, 130, 16)])
def test_scan_matches_sequential_reference_values_and_gradients(shape):
    inputs = scan_inputs(*shape)
    y, y_ref = selective_scan(*inputs), selective_scan_reference(*inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, upstream)
    grads_ref = torch.autograd.grad(y_ref, inputs, upstream)
    for name, g, g_ref in zip(["u", "delta", "A", "B", "C", "D"], grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_float32_kernel_is_accurate_to_float32():
    inputs64 = scan_inputs(4, 8, 256, 16, seed=1)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    y64, y32 = selective_scan_reference(*inputs64), selective_scan(*inputs32)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)
    grads64 = torch.autograd.grad(y64.sum(), inputs64)
    grads32 = torch.autograd.grad(y32.sum(), inputs32)
    for g32, g64 in zip(grads32, grads64, strict=True):
        scale = g64.abs().max()
        assert (g32.double() - g64).abs().max() <= 1e-4 * scale


def test_mamba_layer_has_mamba_ssm_names_shapes_and_initialisation():
    layer = Mamba(36)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"in_proj.weight": (144, 36), "conv1d.weight": (72, 1, 4), "conv1d.bias": (72,),
                      "x_proj.weight": (3 + 32, 72), "dt_proj.weight": (72, 3), "dt_proj.bias": (72,),
                      "A_log": (72, 16), "D": (72,), "out_proj.weight": (36, 72)}
    torch.testing.assert_close(-torch.exp(layer.A_log[5]), -torch.arange(1, 17, dtype=torch.float32))
    assert torch.all(layer.D == 1)
    dt = torch.nn.functional.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert layer.dt_proj.weight.abs().max() <= 3**-0.5


def test_mamba_kernel_backend_matches_reference_backend():
    torch.manual_seed(0)
    layer = Mamba(16).double()
    x = torch.randn(3, 40, 16, dtype=torch.float64, requires_grad=True)
    layer.backend = "torch"
    out = layer(x)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    layer.backend = "reference"
    out_ref = layer(x)
    (g_ref,) = torch.autograd.grad(out_ref.square().sum(), x)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.skipif(not mamba_ssm_available(), reason="needs the mamba-ssm CUDA kernels and a GPU")
def test_one_set_of_weights_gives_the_same_outputs_on_both_backends():
    torch.manual_seed(0)
    layer = Mamba(72).cuda()
    x = torch.randn(8, 256, 72, device="cuda")
    layer.backend = "cuda"
    cuda_out = layer(x)
    layer.backend = "torch"
    cpu_out = layer.cpu()(x.cpu())
    diff = (cuda_out.cpu() - cpu_out).abs().max().item()
    print(f"max abs difference CUDA kernel vs CPU kernel: {diff:.2e}")
    assert diff < 1e-3
