"""A Mamba-1 layer with the parameters of ``mamba_ssm.Mamba``, runnable on CPU and on CUDA.

One set of weights, several scans (``backend``):

- ``numba``-compiled CPU kernel (:mod:`neurostorm.models.scan`), name ``"torch"``: CPU tensors;
- ``"triton"`` (:mod:`neurostorm.models.scan_triton`): CUDA tensors, with nothing to compile at install time
  (Triton ships with every CUDA build of PyTorch); CPU tensors under ``TRITON_INTERPRET=1`` (tests);
- ``"cuda"``: ``mamba_ssm``'s ``selective_scan_fn`` CUDA kernel, when that package is installed;
- ``"reference"``: a plain PyTorch loop, slow, for tests;
- ``"auto"``: on CUDA ``mamba_ssm`` when importable, else Triton; on the CPU the numba kernel.

A tensor is never copied between devices to be scanned. Parameter names, shapes and initialisation are
those of ``mamba_ssm.Mamba(d_model, d_state=16, d_conv=4, expand=2)``, so a state dict moves between this
layer, the CUDA path and the reference code unchanged.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from neurostorm.models.scan import selective_scan, selective_scan_reference

Backend = Literal["auto", "torch", "triton", "cuda", "reference"]
BACKENDS: tuple[str, ...] = get_args(Backend)


def mamba_ssm_available() -> bool:
    """True when the ``mamba_ssm`` CUDA kernels can be imported and a GPU is there."""
    return importlib.util.find_spec("mamba_ssm") is not None and torch.cuda.is_available()


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_runs_on(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def scan_backend(backend: str, device: torch.device | str) -> str:
    """The scan that ``backend`` runs for tensors on ``device``: ``"torch"`` (our numba CPU kernel),
    ``"triton"``, ``"cuda"`` (mamba_ssm) or ``"reference"``. Raises a ValueError saying what is missing
    when that scan cannot run there."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            return "torch"
        if mamba_ssm_available():
            return "cuda"
        if triton_available():
            return "triton"
        raise ValueError(f"no selective scan for {device.type} tensors: install triton (it comes with CUDA "
                         "builds of PyTorch) or mamba-ssm")
    if backend == "torch" and device.type != "cpu":
        raise ValueError(f"backend='torch' is the CPU kernel; the tensors are on {device.type} "
                         "(use backend='auto' or 'triton')")
    if backend == "cuda" and not (mamba_ssm_available() and device.type == "cuda"):
        raise ValueError("backend='cuda' needs the mamba-ssm package and CUDA tensors")
    if backend == "triton" and not (triton_available() and _triton_runs_on(device)):
        raise ValueError("backend='triton' needs the triton package and CUDA tensors (or TRITON_INTERPRET=1 "
                         "for CPU tensors)")
    return backend


def describe_scan_backends() -> str:
    """One line saying which scan runs where on this machine (for ``neurostorm info`` and logs)."""
    gpu = "mamba_ssm CUDA kernel" if mamba_ssm_available() else \
        "Triton kernel" if triton_available() else "none (install triton or mamba-ssm)"
    return f"selective scan (backend auto): CPU numba kernel; CUDA {gpu}"


def _cuda_selective_scan(u, delta, A, B, C, D):  # noqa: N803 - the paper's names
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    # mamba_ssm wants B, C as (Bs, N, L); it computes in float32 and returns u's dtype
    return selective_scan_fn(u, delta, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), D.float())


def _triton_selective_scan(u, delta, A, B, C, D):  # noqa: N803 - the paper's names
    from neurostorm.models.scan_triton import selective_scan_triton

    return selective_scan_triton(u, delta, A, B, C, D)


SCAN_NAMES = {"torch": "numba CPU kernel", "triton": "Triton kernel", "cuda": "mamba_ssm CUDA kernel",
              "reference": "plain PyTorch loop"}
SCANS: dict[str, Callable[..., torch.Tensor]] = {"torch": selective_scan, "triton": _triton_selective_scan,
                                                 "cuda": _cuda_selective_scan, "reference": selective_scan_reference}


class Mamba(nn.Module):
    """Mamba-1 selective state-space layer (Gu & Dao, 2023).

    Maps (B, L, d_model) to (B, L, d_model). ``backend`` picks the selective scan (see the module
    docstring); ``auto`` takes the fastest one available for the tensors' device.
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

    def _scan(self, u: torch.Tensor) -> Callable[..., torch.Tensor]:
        return SCANS[scan_backend(self.backend, u.device)]

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
