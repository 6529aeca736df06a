"""A Mamba-1 layer with the parameters of ``mamba_ssm.Mamba``, runnable on CPU and on CUDA.

One set of weights, two scans: our fused CPU kernel (:mod:`neurostorm.models.scan`) and, when the
``mamba-ssm`` package is installed and the tensor lives on a GPU, its ``selective_scan_fn`` CUDA kernel.
Parameter names, shapes and initialisation are those of ``mamba_ssm.Mamba(d_model, d_state=16, d_conv=4,
expand=2)``, so a state dict moves between this layer, the CUDA path and the reference code unchanged.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from neurostorm.models.scan import selective_scan, selective_scan_reference

Backend = Literal["auto", "torch", "cuda", "reference"]


def mamba_ssm_available() -> bool:
    """True when the ``mamba_ssm`` CUDA kernels can be imported."""
    return importlib.util.find_spec("mamba_ssm") is not None and torch.cuda.is_available()


def _cuda_selective_scan(u, delta, A, B, C, D):  # noqa: N803 - the paper's names
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    # mamba_ssm wants B, C as (Bs, N, L); it computes in float32 and returns u's dtype
    return selective_scan_fn(u, delta, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), D.float())


class Mamba(nn.Module):
    """Mamba-1 selective state-space layer (Gu & Dao, 2023).

    Maps (B, L, d_model) to (B, L, d_model). ``backend``: ``auto`` uses the mamba_ssm CUDA kernel for CUDA
    tensors when installed and our CPU kernel otherwise; ``torch`` forces our kernel (CPU only);
    ``cuda`` requires mamba_ssm; ``reference`` is the slow plain-PyTorch loop, for tests.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 backend: Backend = "auto") -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.backend = backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # mamba_ssm's initialisation of the step size: weights ~ U(±rank^-1/2); bias = softplus⁻¹(dt) with
        # dt log-uniform in [dt_min, dt_max] and floored, so softplus(bias) starts in that range.
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        for p in (self.A_log, self.D):
            p._no_weight_decay = True

    def _scan(self, u: torch.Tensor):
        if self.backend == "reference":
            return selective_scan_reference
        if self.backend == "cuda" or (self.backend == "auto" and u.is_cuda and mamba_ssm_available()):
            if not mamba_ssm_available():
                raise RuntimeError("backend='cuda' needs the mamba-ssm package and a CUDA device")
            return _cuda_selective_scan
        if u.is_cuda:
            # no CUDA kernel: run our CPU kernel on a copy (slow, but the same numbers)
            return lambda *args: selective_scan(*(a.cpu() for a in args)).to(u.device)
        return selective_scan

    def causal_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise causal convolution over time + SiLU: (B, L, E) → (B, L, E).

        Run as a 2-D convolution on the channels-last view (B, E, 1, L) of the (B, L, E) tokens, so neither
        the input nor the output is transposed in memory; the weights stay ``conv1d``'s (E, 1, K).
        """
        length = x.shape[1]
        y = F.conv2d(rearrange(x, "b l e -> b e 1 l"), self.conv1d.weight.unsqueeze(2), self.conv1d.bias,
                     padding=(0, self.d_conv - 1), groups=self.d_inner)  # (B, E, 1, L + K − 1)
        return F.silu(rearrange(y[..., :length], "b e 1 l -> b l e"))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, L, E) each
        x = self.causal_conv(x)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state],
                               dim=-1)  # (B, L, R), (B, L, N), (B, L, N)
        delta = F.softplus(self.dt_proj(dt))  # (B, L, E), positive
        A = -torch.exp(self.A_log.float())  # (E, N)
        # the scan reads (B, E, L) views of the (B, L, E) tensors and returns y as such a view
        y = self._scan(x)(rearrange(x, "b l e -> b e l"), rearrange(delta, "b l e -> b e l"), A, B, C, self.D)
        y = rearrange(y, "b e l -> b l e") * F.silu(z)
        return self.out_proj(y)
