"""The Mamba-1 selective scan on the CPU: fused numba kernels with a hand-written backward pass.

For every sequence ``b`` and channel ``e`` the scan runs the recurrence over time ``t``::

    h_t = exp(Δ_t A_e) ⊙ h_{t-1} + Δ_t u_t B_t        (state h: N numbers)
    y_t = C_t · h_t + D_e u_t

The kernels work on (sequence, time, channel) arrays and vectorise over channels: at each step and state
``n`` the innermost loop updates ``h[n, e]`` for all E channels at once, a long contiguous loop the
compiler turns into SIMD code, with every state in its own lane and no reduction across lanes. The
state of one sequence, (N, E) numbers, lives in a small per-thread buffer (4.6 KiB at N=16, E=72), as
the CUDA kernel keeps it in SRAM: no tensor of shape (batch, L, E, N) is ever allocated.

The backward pass runs over chunks of ``CHUNK`` steps, last chunk first: it recomputes the chunk's
states and decays from the state saved at the chunk's start by the forward pass (saved only when a
gradient is needed: (Bs, L / CHUNK, N, E) numbers, N / CHUNK of u's size: a quarter at N = 16), then
runs the adjoint recurrence backwards over them. Parallelism is over sequences (windows): each thread writes
only its own sequences' gradients, and the per-sequence A/D gradients are summed afterwards.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

CHUNK = 64  # time steps per chunk of the backward pass


@intrinsic
def _float32_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """Reinterpret an int32 as the float32 with the same bits."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(fastmath=True, cache=True, inline="always")
def _exp_float32(x):  # pragma: no cover - compiled
    """exp(x) in float32 for x ≤ 0, vectorisable: 2^k · 2^f, k = round(x·log2 e), |f| ≤ 1/2, 2^f by its
    degree-6 Taylor polynomial (relative error ≤ 2·10⁻⁶)."""
    y = max(x * np.float32(1.4426950408889634), np.float32(-125.0))
    k = np.floor(y + np.float32(0.5))
    f = y - k
    p = np.float32(1.5403530393381606e-4)
    p = p * f + np.float32(1.3333558146428443e-3)
    p = p * f + np.float32(9.618129107628477e-3)
    p = p * f + np.float32(5.550410866482158e-2)
    p = p * f + np.float32(2.402265069591007e-1)
    p = p * f + np.float32(6.931471805599453e-1)
    p = p * f + np.float32(1.0)
    return _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23)) * p


def _exp(x):
    """exp(x); in the compiled kernels float32 arguments take :func:`_exp_float32`."""
    return math.exp(x)


@overload(_exp, inline="always")
def _exp_for_type(x):  # chosen by the argument's type when numba compiles a kernel
    if x == types.float32:
        return lambda x: _exp_float32(x)
    return lambda x: math.exp(x)


@njit(parallel=True, fastmath=True, cache=True)
def _scan_forward(u, delta, A_t, B, C, D, y, starts):  # pragma: no cover - compiled
    # u, delta, y: (Bs, L, E); A_t: (N, E); B, C: (Bs, L, N); D: (E,)
    # starts: (Bs, ceil(L / CHUNK), N, E) receives the state before each chunk, or (0, 0, 0, 0) for none
    n_seq, length, n_chan = u.shape
    n_state = A_t.shape[0]
    save = starts.shape[0] > 0
    for b in prange(n_seq):
        h = np.zeros((n_state, n_chan), dtype=u.dtype)
        du = np.empty(n_chan, dtype=u.dtype)
        for t in range(length):
            if save and t % CHUNK == 0:
                starts[b, t // CHUNK] = h
            u_t, d_t, y_t = u[b, t], delta[b, t], y[b, t]  # (E,) each
            for e in range(n_chan):
                du[e] = d_t[e] * u_t[e]
                y_t[e] = D[e] * u_t[e]
            for n in range(n_state):
                b_n, c_n, h_n, a_n = B[b, t, n], C[b, t, n], h[n], A_t[n]
                for e in range(n_chan):
                    h_n[e] = _exp(d_t[e] * a_n[e]) * h_n[e] + du[e] * b_n
                    y_t[e] += h_n[e] * c_n


@njit(parallel=True, fastmath=True, cache=True)
def _scan_backward(u, delta, A_t, B, C, D, dy, starts,  # pragma: no cover - compiled
                   du, ddelta, dA_seq, dB, dC, dD_seq):
    # inputs as in _scan_forward, dy: (Bs, L, E); gradients with their inputs' shapes, except
    # dA_seq: (Bs, N, E) and dD_seq: (Bs, E), per sequence
    n_seq, length, n_chan = u.shape
    n_state = A_t.shape[0]
    n_chunks = starts.shape[1]
    for b in prange(n_seq):
        states = np.empty((CHUNK + 1, n_state, n_chan), dtype=u.dtype)  # states[s + 1] = h at chunk step s
        decays = np.empty((CHUNK, n_state, n_chan), dtype=u.dtype)  # exp(Δ A) at chunk step s
        grad_h = np.zeros((n_state, n_chan), dtype=u.dtype)  # dL/dh carried from the step after
        grad_a = np.zeros((n_state, n_chan), dtype=u.dtype)
        grad_D = np.zeros(n_chan, dtype=u.dtype)
        grad_uB = np.empty(n_chan, dtype=u.dtype)  # Σ_n dL/dh_n · B_n
        grad_d = np.empty(n_chan, dtype=u.dtype)
        du_t = np.empty(n_chan, dtype=u.dtype)  # Δ u
        for c in range(n_chunks - 1, -1, -1):
            t0 = c * CHUNK
            t1 = min(length, t0 + CHUNK)
            states[0] = starts[b, c]
            for t in range(t0, t1):  # recompute this chunk's states
                s = t - t0
                u_t, d_t = u[b, t], delta[b, t]
                for e in range(n_chan):
                    du_t[e] = d_t[e] * u_t[e]
                for n in range(n_state):
                    b_n, a_n, h0, h1, dec = B[b, t, n], A_t[n], states[s, n], states[s + 1, n], decays[s, n]
                    for e in range(n_chan):
                        dec[e] = _exp(d_t[e] * a_n[e])
                        h1[e] = dec[e] * h0[e] + du_t[e] * b_n
            for t in range(t1 - 1, t0 - 1, -1):  # adjoint recurrence, backwards in time
                s = t - t0
                u_t, d_t, g_y = u[b, t], delta[b, t], dy[b, t]
                for e in range(n_chan):
                    du_t[e] = d_t[e] * u_t[e]
                    grad_uB[e] = 0
                    grad_d[e] = 0
                for n in range(n_state):
                    b_n, c_n, a_n = B[b, t, n], C[b, t, n], A_t[n]
                    h0, h1, dec, g_h, g_a = states[s, n], states[s + 1, n], decays[s, n], grad_h[n], grad_a[n]
                    sum_c = g_y[0] * np.float32(0)  # a zero of the input's dtype
                    sum_b = sum_c
                    for e in range(n_chan):
                        sum_c += g_y[e] * h1[e]
                        g = g_h[e] + g_y[e] * c_n  # dL/dh_t
                        g_decay = g * dec[e] * h0[e]  # dL/d(Δ_t A_e,n)
                        grad_d[e] += g_decay * a_n[e]
                        grad_uB[e] += g * b_n
                        sum_b += g * du_t[e]
                        g_a[e] += g_decay * d_t[e]
                        g_h[e] = g * dec[e]
                    dC[b, t, n] = sum_c
                    dB[b, t, n] = sum_b
                grad_u, grad_delta = du[b, t], ddelta[b, t]
                for e in range(n_chan):
                    grad_u[e] = D[e] * g_y[e] + grad_uB[e] * d_t[e]
                    grad_delta[e] = grad_d[e] + grad_uB[e] * u_t[e]
                    grad_D[e] += g_y[e] * u_t[e]
        dA_seq[b] = grad_a
        dD_seq[b] = grad_D


def _channels_last(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A (Bs, E, L) tensor as a C-contiguous (Bs, L, E) array; no copy when its memory is already so."""
    return tensor.detach().to(dtype).transpose(1, 2).contiguous().numpy()


def _contiguous(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return tensor.detach().to(dtype).contiguous().numpy()


def _use_torch_threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, grad_enabled):  # noqa: N803 - the paper's names
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        u_, delta_ = _channels_last(u, dtype), _channels_last(delta, dtype)  # (Bs, L, E)
        A_t = _contiguous(A.t(), dtype)  # (N, E)
        n_seq, length, n_chan = u_.shape
        needs_grad = grad_enabled and any(ctx.needs_input_grad)  # save chunk starts for a backward pass
        starts = np.empty((n_seq, -(-length // CHUNK), A_t.shape[0], n_chan) if needs_grad else (0, 0, 0, 0),
                          dtype=u_.dtype)
        y = np.empty_like(u_)
        _use_torch_threads()
        _scan_forward(u_, delta_, A_t, _contiguous(B, dtype), _contiguous(C, dtype), _contiguous(D, dtype), y, starts)
        ctx.save_for_backward(u, delta, A, B, C, D)
        ctx.starts = starts
        return torch.from_numpy(y).to(u.dtype).transpose(1, 2)  # (Bs, E, L)

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D = ctx.saved_tensors
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        u_, delta_, dy_ = (_channels_last(t, dtype) for t in (u, delta, dy))  # (Bs, L, E)
        B_, C_ = _contiguous(B, dtype), _contiguous(C, dtype)
        n_seq, _, n_chan = u_.shape
        grad_u, grad_delta = np.empty_like(u_), np.empty_like(u_)
        grad_B, grad_C = np.empty_like(B_), np.empty_like(C_)
        grad_A_seq = np.empty((n_seq, A.shape[1], n_chan), dtype=u_.dtype)
        grad_D_seq = np.empty((n_seq, n_chan), dtype=u_.dtype)
        _use_torch_threads()
        _scan_backward(u_, delta_, _contiguous(A.t(), dtype), B_, C_, _contiguous(D, dtype), dy_, ctx.starts,
                       grad_u, grad_delta, grad_A_seq, grad_B, grad_C, grad_D_seq)
        grads = (torch.from_numpy(grad_u).transpose(1, 2), torch.from_numpy(grad_delta).transpose(1, 2),
                 torch.from_numpy(grad_A_seq.sum(0)).t(), torch.from_numpy(grad_B), torch.from_numpy(grad_C),
                 torch.from_numpy(grad_D_seq.sum(0)))
        return *(g.to(t.dtype) for g, t in zip(grads, (u, delta, A, B, C, D), strict=True)), None


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,  # noqa: N803
                   C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Selective scan on the CPU (differentiable in every input).

    Parameters
    ----------
    u, delta : (Bs, E, L) input and positive step sizes (softplus already applied). Fastest as views of
        (Bs, L, E) tensors (``x.transpose(1, 2)``), the layout the kernels work in; others are copied.
    A : (E, N) state matrix (negative). B, C : (Bs, L, N) input and output projections. D : (E,) skip.

    Returns
    -------
    y : (Bs, E, L), same dtype as ``u``, a view of a (Bs, L, E) tensor; computed in float32 (float64 for
    float64 input).
    """
    if u.device.type != "cpu":
        raise ValueError("selective_scan is the CPU kernel; CUDA tensors take the triton or cuda backend")
    return _SelectiveScan.apply(u, delta, A, B, C, D, torch.is_grad_enabled())


def selective_scan_reference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,  # noqa: N803
                             C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The recurrence written as a plain loop over time in PyTorch: slow, obviously right, for tests."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (Bs, E, N)
    outputs = []
    for t in range(u.shape[2]):
        d = delta[:, :, t, None]  # (Bs, E, 1)
        h = torch.exp(d * A) * h + d * u[:, :, t, None] * B[:, None, t, :]
        outputs.append((h * C[:, None, t, :]).sum(-1) + D * u[:, :, t])
    return torch.stack(outputs, dim=-1)
