"""The Mamba-1 selective scan on the CPU: a fused numba kernel with a hand-written backward pass.

For every sequence ``b`` and channel ``e`` the scan runs the recurrence over time ``t``::

    h_t = exp(Δ_t A_e) ⊙ h_{t-1} + Δ_t u_t B_t        (state h: N numbers)
    y_t = C_t · h_t + D_e u_t

The state of one (b, e) pair lives in a small local array, as the CUDA kernel keeps it in SRAM: no
tensor of shape (batch, L, E, N) is ever allocated, so the extra memory of a scan is O(batch·L·E).
The backward pass recomputes the states of one (b, e) pair into a per-thread (L, N) scratch buffer
(16 KiB at L=256, N=16, resident in cache) and runs the adjoint recurrence backwards over it.

Parallelism is over sequences (windows); each thread owns the B/C gradients of its sequences, and the
per-sequence A/D gradients are summed afterwards, so no two threads ever write the same number.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange


@njit(fastmath=True, cache=True, inline="always")
def _decays(d, a_row, out, bits, bits_as_float, fast):  # pragma: no cover - compiled
    """out[n] = exp(d·A[e, n]) for one channel; ``fast``: a vectorisable float32 exp for arguments ≤ 0."""
    if not fast:
        for n in range(out.shape[0]):
            out[n] = math.exp(d * a_row[n])
        return
    for n in range(out.shape[0]):
        # exp(x) = 2^k · 2^f with k = round(x·log2 e), |f| ≤ 1/2, 2^f by its degree-6 Taylor polynomial
        y = max(d * a_row[n] * np.float32(1.4426950408889634), np.float32(-125.0))
        k = math.floor(y + np.float32(0.5))
        f = y - k
        p = np.float32(1.5403530393381606e-4)
        p = p * f + np.float32(1.3333558146428443e-3)
        p = p * f + np.float32(9.618129107628477e-3)
        p = p * f + np.float32(5.550410866482158e-2)
        p = p * f + np.float32(2.402265069591007e-1)
        p = p * f + np.float32(6.931471805599453e-1)
        p = p * f + np.float32(1.0)
        bits[n] = (np.int32(k) + np.int32(127)) << np.int32(23)  # the float 2^k, written as its bits
        out[n] = bits_as_float[n] * p


@njit(parallel=True, fastmath=True, cache=True)
def _scan_forward(u, delta, A, B, C, D, y, fast):  # pragma: no cover - compiled
    # u, delta, y: (Bs, E, L); A: (E, N); B, C: (Bs, L, N); D: (E,)
    n_seq, n_chan, length = u.shape
    n_state = A.shape[1]
    for b in prange(n_seq):
        h = np.empty(n_state, dtype=u.dtype)
        decay = np.empty(n_state, dtype=u.dtype)
        bits = np.empty(n_state, dtype=np.int32)
        bits_as_float = bits.view(np.float32)
        for e in range(n_chan):
            h[:] = 0
            for t in range(length):
                d = delta[b, e, t]
                du = d * u[b, e, t]
                _decays(d, A[e], decay, bits, bits_as_float, fast)
                acc = h[0] * 0  # a zero of the input's dtype
                for n in range(n_state):
                    h[n] = decay[n] * h[n] + du * B[b, t, n]
                    acc += h[n] * C[b, t, n]
                y[b, e, t] = acc + D[e] * u[b, e, t]


@njit(parallel=True, fastmath=True, cache=True)
def _scan_backward(u, delta, A, B, C, D, dy, du, ddelta, dA_seq, dB, dC, dD_seq, fast):  # pragma: no cover
    # gradients with the shapes of their inputs; dA_seq: (Bs, E, N) and dD_seq: (Bs, E) are per sequence
    n_seq, n_chan, length = u.shape
    n_state = A.shape[1]
    for b in prange(n_seq):
        states = np.empty((length + 1, n_state), dtype=u.dtype)  # states[t + 1] = h_t, states[0] = 0
        decays = np.empty((length, n_state), dtype=u.dtype)  # exp(Δ_t A_e)
        grad_h = np.empty(n_state, dtype=u.dtype)
        bits = np.empty(n_state, dtype=np.int32)
        bits_as_float = bits.view(np.float32)
        for e in range(n_chan):
            # recompute the forward states of this channel
            states[0, :] = 0
            for t in range(length):
                d = delta[b, e, t]
                du_t = d * u[b, e, t]
                _decays(d, A[e], decays[t], bits, bits_as_float, fast)
                for n in range(n_state):
                    states[t + 1, n] = decays[t, n] * states[t, n] + du_t * B[b, t, n]
            # adjoint recurrence, backwards in time; grad_h carries dL/dh_t from step t+1
            grad_h[:] = 0
            grad_D = grad_h[0] * 0
            for t in range(length - 1, -1, -1):
                g_y = dy[b, e, t]
                d = delta[b, e, t]
                u_t = u[b, e, t]
                grad_D += g_y * u_t
                grad_u = D[e] * g_y
                grad_d = grad_u * 0
                for n in range(n_state):
                    dC[b, t, n] += g_y * states[t + 1, n]
                    g = grad_h[n] + g_y * C[b, t, n]  # dL/dh_t
                    g_decay = g * decays[t, n] * states[t, n]  # dL/d(Δ_t A_e,n)
                    grad_d += g_decay * A[e, n] + g * u_t * B[b, t, n]
                    grad_u += g * d * B[b, t, n]
                    dB[b, t, n] += g * d * u_t
                    dA_seq[b, e, n] += g_decay * d
                    grad_h[n] = g * decays[t, n]
                du[b, e, t] = grad_u
                ddelta[b, e, t] = grad_d
            dD_seq[b, e] = grad_D


def _as_numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return tensor.detach().to(dtype).contiguous().numpy()


def _use_torch_threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):  # noqa: N803 - the paper's names
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        arrays = [_as_numpy(t, dtype) for t in (u, delta, A, B, C, D)]
        y = np.empty_like(arrays[0])
        _use_torch_threads()
        _scan_forward(*arrays, y, dtype == torch.float32)
        ctx.save_for_backward(u, delta, A, B, C, D)
        return torch.from_numpy(y).to(u.dtype)

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D = ctx.saved_tensors
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        arrays = [_as_numpy(t, dtype) for t in (u, delta, A, B, C, D, dy)]
        n_seq, n_chan, _ = u.shape
        grad_u, grad_delta = np.empty_like(arrays[0]), np.empty_like(arrays[0])
        grad_B, grad_C = np.zeros_like(arrays[3]), np.zeros_like(arrays[4])
        grad_A_seq = np.zeros((n_seq, *A.shape), dtype=arrays[0].dtype)
        grad_D_seq = np.zeros((n_seq, n_chan), dtype=arrays[0].dtype)
        _use_torch_threads()
        _scan_backward(*arrays, grad_u, grad_delta, grad_A_seq, grad_B, grad_C, grad_D_seq, dtype == torch.float32)
        grads = (grad_u, grad_delta, grad_A_seq.sum(0), grad_B, grad_C, grad_D_seq.sum(0))
        return tuple(torch.from_numpy(g).to(t.dtype) for g, t in zip(grads, (u, delta, A, B, C, D), strict=True))


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,  # noqa: N803
                   C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Selective scan on the CPU (differentiable in every input).

    Parameters
    ----------
    u, delta : (Bs, E, L) input and positive step sizes (softplus already applied).
    A : (E, N) state matrix (negative). B, C : (Bs, L, N) input and output projections. D : (E,) skip.

    Returns
    -------
    y : (Bs, E, L), same dtype as ``u``; computed in float32 (float64 for float64 input).
    """
    if u.device.type != "cpu":
        raise ValueError("selective_scan is the CPU kernel; on CUDA the mamba_ssm backend is used")
    return _SelectiveScan.apply(u, delta, A, B, C, D)


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
