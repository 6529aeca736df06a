"""The Mamba-1 selective scan on a GPU in Triton: nothing to compile at install time.

Same contract as :func:`neurostorm.models.scan.selective_scan`; for every sequence ``b`` and channel ``e``::

    h_t = exp(Δ_t A_e) ⊙ h_{t-1} + Δ_t u_t B_t        (state h: N numbers)
    y_t = C_t · h_t + D_e u_t

One program runs one sequence for a block of ``BLOCK_E`` channels; its (BLOCK_E, N) state lives in registers
and the time loop runs inside the program, so no (Bs, L, E, N) tensor exists. Time is walked in chunks of
``CHUNK`` steps, unrolled at compile time. The forward pass saves the state at each chunk's start
((Bs, L / CHUNK, E, N) float32 numbers, u's size at N = 16 and CHUNK = 16) when a gradient is needed; the
backward pass takes the chunks last first, recomputes a chunk's states from its saved start into a scratch
of CHUNK states per program ((Bs, CHUNK, E, N) numbers, reused by every chunk), then runs the adjoint
recurrence back over them::

    g_t = dy_t C_t + exp(Δ_{t+1} A) ⊙ g_{t+1}          (adjoint of h_t)

Everything is computed in float32 whatever the inputs' dtype (float32, bfloat16, float16); y and the
gradients come back in the inputs' dtypes. dB and dC sum over channel blocks with atomic adds; dA and dD
are summed over sequences afterwards. N must be a power of two from 2 to 32 (16 in every Mamba preset).
Without a GPU the kernels run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``), which the
tests use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 16  # time steps unrolled per chunk; the backward pass keeps a chunk's states in a per-program scratch
BLOCK_E = 32  # channels per program
SUPPORTED_STATES = (2, 4, 8, 16, 32)


@triton.jit
def _program(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, n_chan, s_ub, s_ue, s_db, s_de, s_bb,
             N: tl.constexpr, BLOCK: tl.constexpr):
    """This program's sequence and channel block: channel indices (BLOCK,), state indices (N,), the channel
    mask, A (BLOCK, N) and D (BLOCK,) in float32, and pointers to its u, Δ (at t = 0) and B, C."""
    seq, block = tl.program_id(0), tl.program_id(1)
    channels = block * BLOCK + tl.arange(0, BLOCK)
    states = tl.arange(0, N)
    chan_ok = channels < n_chan
    A = tl.load(a_ptr + channels[:, None] * N + states[None, :], mask=chan_ok[:, None], other=0.0).to(tl.float32)
    D = tl.load(d_ptr + channels, mask=chan_ok, other=0.0).to(tl.float32)
    u_seq, delta_seq = u_ptr + seq * s_ub + channels * s_ue, delta_ptr + seq * s_db + channels * s_de
    return seq, block, channels, states, chan_ok, A, D, u_seq, delta_seq, b_ptr + seq * s_bb, c_ptr + seq * s_bb


@triton.jit
def _step(u_ptr, delta_ptr, b_ptr, c_ptr, t, length, chan_ok, states, s_ul, s_dl, s_bl, A):
    """Inputs of step t (zeros past the end): u, Δ (BLOCK_E,), B, C (N,), the decay exp(ΔA) (BLOCK_E, N),
    and the masks of real steps over channels and states.
    ``u_ptr``, ``delta_ptr`` point at the block's channels at t = 0; B, C at the sequence's t = 0."""
    ok_e = chan_ok & (t + tl.zeros(chan_ok.shape, tl.int32) < length)  # (BLOCK,): a channel at a real step
    ok_n = t + tl.zeros(states.shape, tl.int32) < length  # (N,)
    u = tl.load(u_ptr + t * s_ul, mask=ok_e, other=0.0).to(tl.float32)
    delta = tl.load(delta_ptr + t * s_dl, mask=ok_e, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + t * s_bl + states, mask=ok_n, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + t * s_bl + states, mask=ok_n, other=0.0).to(tl.float32)
    decay = tl.exp(delta[:, None] * A)  # 1 past the end: the state carries over unchanged
    return u, delta, b, c, decay, ok_e, ok_n


@triton.jit
def _scan_forward_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, y_ptr, start_ptr,
                         length, n_chan, n_chunks,
                         s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_bb, s_bl, s_yb, s_ye, s_yl,
                         N: tl.constexpr, BLOCK: tl.constexpr, K: tl.constexpr, SAVE: tl.constexpr):
    seq, block, channels, states, chan_ok, A, D, u_seq, delta_seq, b_seq, c_seq = _program(
        u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, n_chan, s_ub, s_ue, s_db, s_de, s_bb, N, BLOCK)
    y_seq = y_ptr + seq * s_yb + channels * s_ye
    h = tl.zeros((BLOCK, N), dtype=tl.float32)
    for chunk in range(n_chunks):
        if SAVE:  # the state before the chunk's first step, (E, N) per chunk
            start = start_ptr + ((seq * n_chunks + chunk) * n_chan + channels[:, None]) * N + states[None, :]
            tl.store(start, h, mask=chan_ok[:, None])
        for k in tl.static_range(K):
            t = chunk * K + k
            u, delta, b, c, decay, ok_e, ok_n = _step(u_seq, delta_seq, b_seq, c_seq, t, length, chan_ok, states,
                                          s_ul, s_dl, s_bl, A)
            h = decay * h + (delta * u)[:, None] * b[None, :]
            y = tl.sum(h * c[None, :], axis=1) + D * u
            tl.store(y_seq + t * s_yl, y, mask=ok_e)


@triton.jit
def _scan_backward_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, dy_ptr, start_ptr, scratch_ptr,
                          du_ptr, ddelta_ptr, da_ptr, db_ptr, dc_ptr, dd_ptr,
                          length, n_chan, n_chunks,
                          s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_bb, s_bl, s_yb, s_ye, s_yl, s_gb, s_ge, s_gl,
                          N: tl.constexpr, BLOCK: tl.constexpr, K: tl.constexpr):
    seq, block, channels, states, chan_ok, A, D, u_seq, delta_seq, b_seq, c_seq = _program(
        u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, d_ptr, n_chan, s_ub, s_ue, s_db, s_de, s_bb, N, BLOCK)
    dy_seq = dy_ptr + seq * s_yb + channels * s_ye
    du_seq, ddelta_seq = du_ptr + seq * s_gb + channels * s_ge, ddelta_ptr + seq * s_gb + channels * s_ge
    db_seq, dc_seq = db_ptr + seq * length * N, dc_ptr + seq * length * N  # float32 (Bs, L, N), contiguous
    # K slots of (BLOCK, N) float32 for the states of the chunk being differentiated, this program's own
    scratch = scratch_ptr + (seq * tl.num_programs(1) + block) * K * BLOCK * N + \
        tl.arange(0, BLOCK)[:, None] * N + states[None, :]
    carried = tl.zeros((BLOCK, N), dtype=tl.float32)  # exp(Δ_{t+1} A) ⊙ g_{t+1}
    grad_a = tl.zeros((BLOCK, N), dtype=tl.float32)
    grad_d = tl.zeros((BLOCK,), dtype=tl.float32)
    for back in range(n_chunks):
        chunk = n_chunks - 1 - back
        start = start_ptr + ((seq * n_chunks + chunk) * n_chan + channels[:, None]) * N + states[None, :]
        h_start = tl.load(start, mask=chan_ok[:, None], other=0.0)
        h = h_start
        for k in tl.static_range(K):  # the chunk's states h_t into this program's scratch slots
            u, delta, b, c, decay, ok_e, ok_n = _step(u_seq, delta_seq, b_seq, c_seq, chunk * K + k, length, chan_ok,
                                          states, s_ul, s_dl, s_bl, A)
            h = decay * h + (delta * u)[:, None] * b[None, :]
            tl.store(scratch + k * BLOCK * N, h)
        tl.debug_barrier()
        for j in tl.static_range(K):
            k = K - 1 - j
            t = chunk * K + k
            u, delta, b, c, decay, ok_e, ok_n = _step(u_seq, delta_seq, b_seq, c_seq, t, length, chan_ok, states,
                                          s_ul, s_dl, s_bl, A)
            dy = tl.load(dy_seq + t * s_yl, mask=ok_e, other=0.0).to(tl.float32)
            g = carried + dy[:, None] * c[None, :]  # adjoint of h_t, (BLOCK, N)
            h_t = tl.load(scratch + k * BLOCK * N)
            h_prev = tl.load(scratch + (k - 1) * BLOCK * N) if k > 0 else h_start
            tl.atomic_add(dc_seq + t * N + states, tl.sum(dy[:, None] * h_t, axis=0), mask=ok_n)
            tl.atomic_add(db_seq + t * N + states, tl.sum(g * (delta * u)[:, None], axis=0), mask=ok_n)
            from_decay = g * h_prev * decay  # adjoint of Δ_t A through exp
            du = tl.sum(g * b[None, :], axis=1) * delta + D * dy
            ddelta = tl.sum(g * b[None, :], axis=1) * u + tl.sum(from_decay * A, axis=1)
            tl.store(du_seq + t * s_gl, du, mask=ok_e)
            tl.store(ddelta_seq + t * s_gl, ddelta, mask=ok_e)
            grad_a += from_decay * delta[:, None]
            grad_d += dy * u
            carried = decay * g
        tl.debug_barrier()  # every read of this chunk's scratch is done before the next chunk overwrites it
    tl.store(da_ptr + (seq * n_chan + channels[:, None]) * N + states[None, :], grad_a, mask=chan_ok[:, None])
    tl.store(dd_ptr + seq * n_chan + channels, grad_d, mask=chan_ok)


def _grid(u: torch.Tensor) -> tuple[int, int]:
    return u.shape[0], triton.cdiv(u.shape[1], BLOCK_E)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, grad_enabled):  # noqa: N803 - the paper's names
        n_seq, n_chan, length = u.shape
        n_states = A.shape[1]
        A32, D32 = A.detach().float().contiguous(), D.detach().float().contiguous()
        n_chunks = triton.cdiv(length, CHUNK)
        save = grad_enabled and any(ctx.needs_input_grad)
        starts = torch.empty((n_seq, n_chunks, n_chan, n_states) if save else (1,), device=u.device,
                             dtype=torch.float32)
        y = torch.empty(n_seq, length, n_chan, device=u.device, dtype=u.dtype).transpose(1, 2)  # (Bs, E, L) view
        _scan_forward_kernel[_grid(u)](
            u, delta, A32, B, C, D32, y, starts, length, n_chan, n_chunks,
            *u.stride(), *delta.stride(), B.stride(0), B.stride(1), *y.stride(),
            N=n_states, BLOCK=BLOCK_E, K=CHUNK, SAVE=save)
        ctx.save_for_backward(u, delta, A, B, C, D, starts)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, starts = ctx.saved_tensors
        n_seq, n_chan, length = u.shape
        n_states = A.shape[1]
        grad_u = torch.empty(n_seq, length, n_chan, device=u.device, dtype=torch.float32).transpose(1, 2)
        grad_delta = torch.empty_like(grad_u)
        grad_B = torch.zeros(n_seq, length, n_states, device=u.device, dtype=torch.float32)
        grad_C = torch.zeros_like(grad_B)
        grad_A_seq = torch.empty(n_seq, n_chan, n_states, device=u.device, dtype=torch.float32)
        grad_D_seq = torch.empty(n_seq, n_chan, device=u.device, dtype=torch.float32)
        grid = _grid(u)
        scratch = torch.empty(grid[0] * grid[1] * CHUNK * BLOCK_E * n_states, device=u.device, dtype=torch.float32)
        _scan_backward_kernel[grid](
            u, delta, A.detach().float().contiguous(), B, C, D.detach().float().contiguous(), dy, starts, scratch,
            grad_u, grad_delta, grad_A_seq, grad_B, grad_C, grad_D_seq, length, n_chan, starts.shape[1],
            *u.stride(), *delta.stride(), B.stride(0), B.stride(1), *dy.stride(), *grad_u.stride(),
            N=n_states, BLOCK=BLOCK_E, K=CHUNK)
        grads = (grad_u, grad_delta, grad_A_seq.sum(0), grad_B, grad_C, grad_D_seq.sum(0))
        return *(g.to(t.dtype) for g, t in zip(grads, (u, delta, A, B, C, D), strict=True)), None


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,  # noqa: N803
                          C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Selective scan in Triton (differentiable in every input); CUDA tensors, or CPU ones under
    ``TRITON_INTERPRET=1``.

    Parameters
    ----------
    u, delta : (Bs, E, L) input and positive step sizes, read in place with any strides (the Mamba layer
        passes views of (Bs, L, E) tensors); float32, bfloat16 or float16.
    A : (E, N) state matrix (negative), N a power of two from 2 to 32. B, C : (Bs, L, N), read in place
        when their last stride is 1 (the x_proj split gives such views), else copied. D : (E,) skip.

    Returns
    -------
    y : (Bs, E, L) in u's dtype, a view of a (Bs, L, E) tensor; accumulated in float32.
    """
    if A.shape[1] not in SUPPORTED_STATES:
        raise ValueError(f"the Triton scan supports state sizes N in {SUPPORTED_STATES}, got N = {A.shape[1]}")
    if u.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"the Triton scan takes float32, bfloat16 or float16 inputs, got {u.dtype}")
    B, C = (t if t.stride(2) == 1 else t.contiguous() for t in (B, C))
    return _TritonScan.apply(u, delta, A, B, C, D, torch.is_grad_enabled())
