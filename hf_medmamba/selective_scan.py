"""The selective scan (Mamba's S6 recurrence) behind one dispatch function.

Semantics are those of mamba-ssm's ``selective_scan_fn`` (v1.x) for real ``A`` and input-dependent ``B``/``C``.
For every batch ``b`` and channel ``c``, in float32 (or float64 when an input is float64)::

    dt_t = softplus(delta_t + delta_bias_c)          # softplus only with delta_softplus=True
    h_t  = exp(dt_t * A_c) * h_{t-1} + dt_t * u_t * B_t     # h_0 = 0, elementwise over the n states
    y_t  = <h_t, C_t> + D_c * u_t
    y_t *= silu(z_t)                                  # only when z is given

Shapes: ``u, delta, z`` (b, d, L); ``A`` (d, n); ``B, C`` (b, n, L) or grouped (b, g, n, L), where channel ``c`` reads
group ``c // (d // g)``; ``D, delta_bias`` (d,). The output has the dtype of ``u``; ``return_last_state`` also returns
``h_L`` (b, d, n) in the compute dtype.

Backends (see `selective_scan`):

- ``"reference"``: the plain sequential recurrence. It is the readable definition and the test oracle, not a fast path.
- ``"chunked"``: a two-level chunked scan in pure PyTorch with a hand-written backward, for CPU and GPU.
- ``"cpu_kernel"``: the compiled CPU kernel, when the optional `hf_medmamba` extension can be built.
- ``"mamba_ssm"``: mamba-ssm's CUDA kernel, only when ``mamba_ssm`` imports and the tensors are on CUDA.
- ``"export"``: a pure function of one step that `torch.export` and the ONNX exporter can trace (see
  `selective_scan_export`); what ``"auto"`` picks while `torch.export` traces.

``"auto"`` picks per call, from the device of the tensors: never at import time.
"""

import math
import os
from functools import lru_cache

import torch
import torch.nn.functional as F
from transformers.utils import logging


logger = logging.get_logger(__name__)

SCAN_BACKENDS = ("auto", "reference", "chunked", "cpu_kernel", "mamba_ssm", "export")
SCAN_BACKEND_ENV = "HF_MEDMAMBA_SCAN_BACKEND"
"""Environment variable that sets the backend wherever a model or a call leaves it at ``"auto"``."""

DISABLE_CPU_KERNEL_ENV = "HF_MEDMAMBA_DISABLE_CPU_KERNEL"
"""Set to ``1`` to keep ``"auto"`` from using the compiled CPU kernel."""

# Elements of one block buffer of the chunked scan (4 MiB in float32). It bounds the extra memory of a call.
_BLOCK_ELEMENTS = 1 << 20

# exp() of arguments below about -87.3 returns float32 subnormals through a path about 25x slower than the normal one.
# Clamping dt * A there changes a decay of at most 1.2e-38 into 1.3e-38: invisible next to any state it multiplies.
_LOG_DECAY_FLOOR = -87.0


# ----------------------------------------------------------------------------------------------------------------------
# Input checking shared by every backend
# ----------------------------------------------------------------------------------------------------------------------


def _compute_dtype(*tensors):
    """float32, or float64 when an input is float64 (gradcheck); half inputs are computed in float32."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    """Validate shapes and return ``B`` and ``C`` in grouped form (b, g, n, L)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must have shape (batch, channels, length), got {tuple(u.shape)}.")
    b, d, L = u.shape
    if L == 0:
        raise ValueError("selective_scan: the sequence is empty (length 0); the scan needs at least one step.")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta has shape {tuple(delta.shape)}, expected u's shape {tuple(u.shape)}.")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must have shape (channels={d}, d_state), got {tuple(A.shape)}.")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported; pass a real A (here A = -exp(A_logs)).")
    n = A.shape[1]
    grouped = []
    for name, x in (("B", B), ("C", C)):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[0] != b or x.shape[2] != n or x.shape[3] != L:
            raise ValueError(
                f"selective_scan: {name} must have shape (batch={b}, d_state={n}, length={L}) or "
                f"(batch, groups, d_state, length), got {tuple(x.shape)}. "
                f"Time-invariant (d, n) {name} is not supported."
            )
        if d % x.shape[1] != 0:
            raise ValueError(f"selective_scan: {name} has {x.shape[1]} groups, which does not divide {d} channels.")
        grouped.append(x)
    if grouped[0].shape[1] != grouped[1].shape[1]:
        raise ValueError("selective_scan: B and C must have the same number of groups.")
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and x.shape != (d,):
            raise ValueError(f"selective_scan: {name} must have shape ({d},), got {tuple(x.shape)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z has shape {tuple(z.shape)}, expected u's shape {tuple(u.shape)}.")
    return grouped


def _step_sizes(delta, delta_bias, delta_softplus):
    """dt = softplus(delta + bias) with mamba's threshold of 20 (identity above it)."""
    if delta_bias is not None:
        delta = delta + delta_bias.unsqueeze(-1)
    return F.softplus(delta) if delta_softplus else delta


def _finish(y, u, D, z, out_dtype):
    """Add the ``D * u`` skip, apply the ``silu(z)`` gate and cast to the output dtype."""
    if D is not None:
        y = y + u * D.unsqueeze(-1)
    if z is not None:
        y = y * F.silu(z)
    return y.to(out_dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Reference: the sequential recurrence
# ----------------------------------------------------------------------------------------------------------------------


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The recurrence exactly as written in the module docstring, one time step at a time (differentiable)."""
    B, C = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    out_dtype = u.dtype
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    D, z, delta_bias = (None if t is None else t.to(dtype) for t in (D, z, delta_bias))
    dt = _step_sizes(delta, delta_bias, delta_softplus)

    b, d, _ = u.shape
    g, n = B.shape[1], B.shape[2]
    dg = d // g  # channels per group of B/C
    A = A.view(g, dg, n)
    h = u.new_zeros(b, g, dg, n)
    ys = []
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
        dt_t, u_t = dt_t.view(b, g, dg, 1), u_t.view(b, g, dg, 1)
        h = torch.exp(dt_t * A) * h + dt_t * u_t * B_t.unsqueeze(2)
        ys.append((h * C_t.unsqueeze(2)).sum(-1).reshape(b, d))
    y = _finish(torch.stack(ys, dim=-1), u, D, z, out_dtype)
    return (y, h.reshape(b, d, n)) if return_last_state else y


# ----------------------------------------------------------------------------------------------------------------------
# Chunked: a two-level scan in pure PyTorch
# ----------------------------------------------------------------------------------------------------------------------
#
# The sequence is cut into ``nc`` chunks of ``T ~ sqrt(L)`` steps. A Python loop over the T positions of a chunk runs
# vectorised over all chunks at once; a short loop over chunks carries the state from one chunk to the next; a second
# pass re-runs every chunk from its true start state and emits y. Inputs are laid out as (T, b, g, nc, m) so that step t
# of every chunk is one contiguous slab, and the per-step work happens in preallocated blocks of a few steps: no
# (b, d, L, n) tensor is ever built. Padding at the end uses dt = 0 and u = 0, which leaves the state unchanged.


def _chunk_length(L):
    return max(1, math.isqrt(L - 1) + 1)  # ceil(sqrt(L))


def _to_steps(x, T, nc):
    """(b, g, m, L) -> (T, b, g, nc, m), zero-padded to nc * T steps."""
    pad = nc * T - x.shape[-1]
    if pad:
        x = F.pad(x, (0, pad))
    b, g, m, _ = x.shape
    return x.view(b, g, m, nc, T).permute(4, 0, 1, 3, 2).contiguous()


def _from_steps(x, L):
    """(T, b, g, nc, m) -> (b, g * m, L)."""
    T, b, g, nc, m = x.shape
    return x.permute(1, 2, 4, 3, 0).reshape(b, g * m, nc * T)[..., :L]


class _ChunkLayout:
    """The scan inputs rearranged to (T, b, g, nc, ·) and the sizes of the two-level decomposition.

    States are kept as (b, g, nc, n, dg): channels innermost, so that every per-step operation runs over contiguous
    memory and the read-out <h_t, C_t> is a batched (1, n) @ (n, dg) product.
    """

    def __init__(self, u, dt, A, B, C):
        b, d, L = u.shape
        g, n = B.shape[1], B.shape[2]
        self.b, self.d, self.L, self.g, self.n, self.dg = b, d, L, g, n, d // g
        self.T = T = _chunk_length(L)
        self.nc = nc = -(-L // T)
        self.dt = _to_steps(dt.view(b, g, self.dg, L), T, nc)  # (T, b, g, nc, dg)
        self.dtu = _to_steps((dt * u).view(b, g, self.dg, L), T, nc)  # (T, b, g, nc, dg)
        self.B = _to_steps(B, T, nc)  # (T, b, g, nc, n)
        self.C = _to_steps(C, T, nc)  # (T, b, g, nc, n)
        self.A = A.view(g, self.dg, n).transpose(1, 2).unsqueeze(1).contiguous()  # (g, 1, n, dg)
        self.state_shape = (b, g, nc, n, self.dg)
        self.block = max(1, min(T, _BLOCK_ELEMENTS // (b * d * nc * n)))

    def blocks(self, reverse=False):
        starts = range(0, self.T, self.block)
        for t0 in reversed(starts) if reverse else starts:
            yield t0, min(self.T, t0 + self.block)

    def decay(self, t0, t1, out):
        """exp(dt * A) for steps t0..t1 of every chunk, into ``out`` (t1 - t0, b, g, nc, n, dg)."""
        torch.mul(self.dt[t0:t1].unsqueeze(-2), self.A, out=out)
        return out.clamp_(min=_LOG_DECAY_FLOOR).exp_()

    def drive(self, t0, t1, out):
        """dt * u * B for steps t0..t1 of every chunk, into ``out``."""
        return torch.mul(self.dtu[t0:t1].unsqueeze(-2), self.B[t0:t1].unsqueeze(-1), out=out)

    def chunk_decay(self):
        """exp(A * sum of dt over the chunk): the factor that carries a state through a whole chunk."""
        return torch.exp((self.A * self.dt.sum(0).unsqueeze(-2)).clamp_(min=_LOG_DECAY_FLOOR))

    def state_to_bdn(self, state):
        """(b, g, n, dg) -> (b, d, n)."""
        return state.transpose(-1, -2).reshape(self.b, self.d, self.n)


def _run_chunks(lay, start, buf_a, buf_h, on_block=None):
    """Run the recurrence through every chunk at once from the per-chunk ``start`` states.

    ``buf_h[1 + i]`` receives the state after step ``t0 + i`` of the current block and ``buf_h[0]`` the state before
    it; ``on_block(t0, t1)`` is called after each block. Returns the state after the last step of each chunk.
    """
    h = start
    for t0, t1 in lay.blocks():
        k = t1 - t0
        buf_h[0].copy_(h)
        a = lay.decay(t0, t1, buf_a[:k])
        hs = lay.drive(t0, t1, buf_h[1 : k + 1])
        for i in range(k):
            hs[i].addcmul_(a[i], buf_h[i])
        if on_block is not None:
            on_block(t0, t1)
        h = buf_h[k]
    return h.clone()


def _carry(local_end, chunk_decay, first):
    """Start state of every chunk from the chunk-local end states (run from zero) and the chunk decays."""
    start = torch.empty_like(local_end)
    start[:, :, 0] = first
    for c in range(1, start.shape[2]):
        torch.addcmul(local_end[:, :, c - 1], chunk_decay[:, :, c - 1], start[:, :, c - 1], out=start[:, :, c])
    return start


def _chunked_forward(lay):
    """Returns y_core = <h_t, C_t> (b, d, L), the last state (b, d, n) and the chunk start states."""
    S = lay.block
    buf_a = lay.dt.new_empty((S, *lay.state_shape))
    buf_h = lay.dt.new_empty((S + 1, *lay.state_shape))
    zeros = lay.dt.new_zeros(lay.state_shape)

    local_end = _run_chunks(lay, zeros, buf_a, buf_h)
    chunk_decay = lay.chunk_decay()
    start = _carry(local_end, chunk_decay, 0.0)
    last = torch.addcmul(local_end[:, :, -1], chunk_decay[:, :, -1], start[:, :, -1])

    y = lay.dt.new_empty((lay.T, *lay.state_shape[:3], 1, lay.dg))  # (T, b, g, nc, 1, dg)

    def emit(t0, t1):
        torch.matmul(lay.C[t0:t1].unsqueeze(-2), buf_h[1 : t1 - t0 + 1], out=y[t0:t1])

    _run_chunks(lay, start, buf_a, buf_h, emit)
    return _from_steps(y.squeeze(-2), lay.L), lay.state_to_bdn(last), start


def _chunked_backward(lay, start, grad_y, grad_last):
    """Gradients of sum(grad_y * y_core) + sum(grad_last * last) w.r.t. u, dt, A, B, C (see `_chunked_forward`).

    With g_t = dL/dh_t, the adjoint runs backwards: g_t = C_t * dy_t + exp(dt_{t+1} A) g_{t+1}. It uses the same
    two-level decomposition in reverse. Forward states are recomputed block by block from checkpoints at block starts,
    so memory stays bounded like the forward's.
    """
    S, T = lay.block, lay.T
    dy = _to_steps(grad_y.reshape(lay.b, lay.g, lay.dg, lay.L), T, lay.nc)  # (T, b, g, nc, dg)
    buf_a = dy.new_empty((S, *lay.state_shape))
    buf_q = dy.new_empty((S, *lay.state_shape))
    buf_h = dy.new_empty((S + 1, *lay.state_shape))

    def cdy(t0, t1, out):  # C_t * dy_t: what y_t sends back into h_t
        return torch.mul(dy[t0:t1].unsqueeze(-2), lay.C[t0:t1].unsqueeze(-1), out=out)

    # Pass 1: the adjoint of every chunk from zero, giving r = exp(dt_0 A) g_0 at each chunk's start.
    r = dy.new_zeros(lay.state_shape)
    for t0, t1 in lay.blocks(reverse=True):
        k = t1 - t0
        a = lay.decay(t0, t1, buf_a[:k])
        q = cdy(t0, t1, buf_q[:k]).mul_(a)
        for i in reversed(range(k)):
            r = q[i].addcmul_(a[i], r)
        r = r.clone()

    # Carry across chunks from the end: what flows into each chunk's last state from the chunks after it.
    chunk_decay = lay.chunk_decay()
    last = grad_last.view(lay.b, lay.g, lay.dg, lay.n).transpose(-1, -2)
    incoming = _carry(r.flip(2), chunk_decay.flip(2), last).flip(2)
    del r

    # Forward checkpoints: the state before each block, for every chunk.
    checkpoints = dy.new_empty((len(range(0, T, S)), *lay.state_shape))

    def keep(t0, t1):
        if t1 < T:
            checkpoints[t1 // S].copy_(buf_h[t1 - t0])

    checkpoints[0].copy_(start)
    _run_chunks(lay, start, buf_a, buf_h, keep)

    # Pass 2: per block from the end, recompute the forward states, run the adjoint, read the gradients off.
    grad_dtu = dy.new_empty((T, *lay.state_shape[:3], 1, lay.dg))
    grad_dt_a = dy.new_empty((T, *lay.state_shape[:3], lay.dg))
    grad_B = dy.new_empty((T, *lay.state_shape[:4], 1))
    grad_C = dy.new_empty((T, *lay.state_shape[:4], 1))
    grad_A = dy.new_zeros((lay.g, lay.n, lay.dg))
    r = incoming
    for t0, t1 in lay.blocks(reverse=True):
        k = t1 - t0
        buf_h[0].copy_(checkpoints[t0 // S])
        a = lay.decay(t0, t1, buf_a[:k])
        h = lay.drive(t0, t1, buf_h[1 : k + 1])
        for i in range(k):
            h[i].addcmul_(a[i], buf_h[i])
        g = cdy(t0, t1, buf_q[:k])
        g[k - 1].add_(r)
        for i in reversed(range(k - 1)):
            g[i].addcmul_(a[i + 1], g[i + 1])
        r = a[0] * g[0]

        torch.matmul(h, dy[t0:t1].unsqueeze(-1), out=grad_C[t0:t1])
        torch.matmul(g, lay.dtu[t0:t1].unsqueeze(-1), out=grad_B[t0:t1])
        torch.matmul(lay.B[t0:t1].unsqueeze(-2), g, out=grad_dtu[t0:t1])
        # d/d(dt) and d/dA of exp(dt * A) h_{t-1}: both read w = g_t * exp(dt_t A) * h_{t-1}.
        w = a.mul_(g).mul_(buf_h[:k])
        torch.sum(torch.mul(w, lay.A, out=g), dim=-2, out=grad_dt_a[t0:t1])
        grad_A += torch.mul(w, lay.dt[t0:t1].unsqueeze(-2), out=g).sum(dim=(0, 1, 3))

    grad_dtu = _from_steps(grad_dtu.squeeze(-2), lay.L)
    grad_dt_a = _from_steps(grad_dt_a, lay.L)
    shape_bc = (lay.b, lay.g, lay.n, lay.L)
    grad_B = _from_steps(grad_B.squeeze(-1), lay.L).reshape(shape_bc)
    grad_C = _from_steps(grad_C.squeeze(-1), lay.L).reshape(shape_bc)
    return grad_dtu, grad_dt_a, grad_A.transpose(1, 2).reshape(lay.d, lay.n), grad_B, grad_C


class _ChunkedScanFunction(torch.autograd.Function):
    """y_core = <h_t, C_t> and h_L for given dt (softplus, bias, D and z are handled by autograd around it)."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        lay = _ChunkLayout(u, dt, A, B, C)
        y, last, start = _chunked_forward(lay)
        ctx.save_for_backward(u, dt, A, B, C, start)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, dt, A, B, C, start = ctx.saved_tensors
        lay = _ChunkLayout(u, dt, A, B, C)
        grad_dtu, grad_dt_a, grad_A, grad_B, grad_C = _chunked_backward(lay, start, grad_y.contiguous(), grad_last)
        grad_u = grad_dtu * dt
        grad_dt = grad_dtu * u + grad_dt_a
        return grad_u, grad_dt, grad_A, grad_B, grad_C


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The two-level chunked scan (pure PyTorch, any device, differentiable with a hand-written backward)."""
    B, C = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    out_dtype = u.dtype
    u, delta, A, B, C = (t.to(dtype).contiguous() for t in (u, delta, A, B, C))
    D, z, delta_bias = (None if t is None else t.to(dtype) for t in (D, z, delta_bias))
    dt = _step_sizes(delta, delta_bias, delta_softplus).contiguous()
    y, last = _ChunkedScanFunction.apply(u, dt, A, B, C)
    y = _finish(y, u, D, z, out_dtype)
    return (y, last) if return_last_state else y


# ----------------------------------------------------------------------------------------------------------------------
# Export: the recurrence as a pure step function, for torch.export and ONNX
# ----------------------------------------------------------------------------------------------------------------------
#
# The compiled kernels are opaque to tracing, and the chunked scan's in-place block buffers and custom autograd.Function
# do not trace into a portable graph. Here one step, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t and y_t = <h_t, C_t>, is
# a pure function scanned over L with `torch._higher_order_ops.scan` when traced (one ONNX ``Scan`` node whatever L,
# its body six small ops; L may even stay symbolic), and with a Python loop over the same function in eager mode.
# Unrolled chunked formulations and a two-level scan were measured against it: see benchmarks/bench_export.py.


def _scan_steps(step, init, xs):
    """``(last carry, stacked outputs)`` of ``carry, y = step(carry, x)`` over the first axis of the tensors ``xs``."""
    if torch.compiler.is_compiling():  # torch.export, torch.compile: a higher-order op (ONNX Scan)
        from torch._higher_order_ops import scan

        return scan(step, init, xs)
    carry, ys = init, []
    for x in zip(*(t.unbind(0) for t in xs)):
        carry, y = step(carry, x)
        ys.append(y)
    return carry, torch.stack(ys)


def _export_scan_core(dt, dtu, B, C, A):
    """The recurrence over the first axis of step-major inputs with leading dims ``lead`` (channels innermost).

    ``dt``, ``dtu = dt * u``: (L, *lead, 1, m); ``B``: (L, *lead, n, 1); ``C``: (L, *lead, 1, n); ``A`` broadcasts to
    (*lead, n, m). Returns y (L, *lead, 1, m) and the last state (*lead, n, m).
    """
    A = A.contiguous()  # the carry must keep the layout of the initial state

    def step(h, inputs):
        dt_t, dtu_t, B_t, C_t = inputs
        h = torch.exp(dt_t * A) * h + dtu_t * B_t
        return h, torch.matmul(C_t, h)

    init = dt.new_zeros((*dt.shape[1:-2], B.shape[-2], dt.shape[-1]))
    last, y = _scan_steps(step, init, (dt, dtu, B, C))
    return y, last


def _cast(t, dtype):
    """``t`` in ``dtype`` (no op in the traced graph when it already is)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _softplus(x):
    """`F.softplus` (threshold 20) from elementwise ops that onnxruntime runs about twice as fast as its Softplus.

    log1p(e^x) uses Goldberg's log1p(y) = log(1 + y) * y / ((1 + y) - 1), accurate to a few ulp: ONNX has no Log1p, and
    a plain log(1 + y) would lose the small step sizes. Both branches stay finite, so gradients do too.
    """
    y = torch.exp(x.clamp(max=21.0))  # clamped past the threshold: no clamp gradient (0 on torch 2.14) at x = 20
    u = 1 + y
    d = u - 1
    tiny = d == 0  # y below half an ulp of 1: log1p(y) = y
    log1p = torch.where(tiny, y, torch.log(u) * (y / torch.where(tiny, 1.0, d)))
    return torch.where(x > 20.0, x, log1p)


def selective_scan_export(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The recurrence as a scan of a pure step function: traceable by `torch.export` and exportable to ONNX."""
    B, C = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    out_dtype = u.dtype
    u, delta, A, B, C, D, z, delta_bias = (_cast(t, dtype) for t in (u, delta, A, B, C, D, z, delta_bias))
    dt = delta if delta_bias is None else delta + delta_bias.unsqueeze(-1)
    dt = _softplus(dt) if delta_softplus else dt

    b, d, L = u.shape
    g, n = B.shape[1], B.shape[2]
    dg = d // g
    steps = (  # (L, b, g, ...): states (b, g, n, dg)
        dt.reshape(b, g, 1, dg, L),
        (dt * u).reshape(b, g, 1, dg, L),
        B.unsqueeze(3),  # (b, g, n, 1, L)
        C.unsqueeze(2),  # (b, g, 1, n, L)
    )
    steps = [t.movedim(-1, 0).contiguous() for t in steps]
    y, last = _export_scan_core(*steps, A.reshape(g, dg, n).transpose(1, 2))
    y = _finish(y.permute(1, 2, 3, 4, 0).reshape(b, d, L), u, D, z, out_dtype)
    return (y, last.transpose(-1, -2).reshape(b, d, n)) if return_last_state else y


def _direction_indices(height, width, device, K=4):
    """Indices that gather SS2D's four scan orders step-major, and put them back, with one ``index_select`` each.

    Entry ``t * K + k`` of the first two: the pixel that direction k visits at step t, and that pixel's row
    ``pixel * K + k`` in a pixel-major, per-direction input. Entry ``p * K + k`` of the third: the row ``t * K + k`` of
    the step-major output at which direction k visits pixel p. Each has K * L entries.
    """
    L = height * width
    pixels = torch.arange(L, device=device)
    column_major = pixels.view(height, width).t().reshape(-1)  # pixel at step t of the column-major order
    column_step = pixels.view(width, height).t().reshape(-1)  # step of each pixel in the column-major order
    order = torch.stack([pixels, column_major, pixels.flip(0), column_major.flip(0)])  # (K, L): step -> pixel
    inverse = torch.stack([pixels, column_step, L - 1 - pixels, L - 1 - column_step])  # (K, L): pixel -> step
    direction = torch.arange(K, device=device).unsqueeze(1)
    return order.t().reshape(-1), (order * K + direction).t().reshape(-1), (inverse * K + direction).t().reshape(-1)


def _cross_selective_scan_export(u, delta, A, B, C, D, delta_bias, height, width):
    """`cross_selective_scan` on the export backend: the four directions gathered step-major with one
    ``index_select`` per input, scanned together (states (4, b, n, E)), and gathered back to their pixels."""
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    u, delta, A, B, C, D, delta_bias = (_cast(t, dtype) for t in (u, delta, A, B, C, D, delta_bias))
    batch, E, L = u.shape
    K, n = B.shape[1], B.shape[2]
    step_pixel, step_row, pixel_row = _direction_indices(height, width, u.device, K)

    def gather(rows, index):  # (K * L or L, b, X) rows -> (L, K, b, X), step-major
        return rows.index_select(0, index).view(L, K, batch, rows.shape[-1])

    us = gather(u.permute(2, 0, 1), step_pixel)
    deltas = gather(delta.view(batch, K, E, L).permute(3, 1, 0, 2).reshape(L * K, batch, E), step_row)
    Bs = gather(B.permute(3, 1, 0, 2).reshape(L * K, batch, n), step_row)
    Cs = gather(C.permute(3, 1, 0, 2).reshape(L * K, batch, n), step_row)
    dt = _softplus(deltas if delta_bias is None else deltas + delta_bias.view(K, 1, E))
    A = A.view(K, 1, E, n).transpose(-1, -2)  # (K, 1, n, E)
    y, _ = _export_scan_core(dt.unsqueeze(-2), (dt * us).unsqueeze(-2), Bs.unsqueeze(-1), Cs.unsqueeze(-2), A)
    y = y.view(L * K, batch, E).index_select(0, pixel_row).view(L, K, batch, E).sum(1).permute(1, 2, 0)
    return y if D is None else y + u * D.view(K, E).sum(0).unsqueeze(-1)  # the D * u skips of the four directions


# ----------------------------------------------------------------------------------------------------------------------
# Optional kernels and the dispatch
# ----------------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _mamba_ssm_kernel():
    """mamba-ssm's ``selective_scan_fn``, or None when mamba_ssm does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA build raising at import
        return None
    return selective_scan_fn


@lru_cache(maxsize=1)
def _cpu_kernel():
    """The compiled CPU scan of the optional `hf_medmamba` extension, or None (it is not part of remote code)."""
    if os.environ.get(DISABLE_CPU_KERNEL_ENV, "0").lower() in ("1", "true", "yes"):
        return None
    try:
        from hf_medmamba import cpu_scan
    except Exception:
        return None
    if getattr(cpu_scan, "KERNEL_API_VERSION", None) != 4:  # an installed hf_medmamba of another generation
        return None
    return cpu_scan.load_cpu_scan()


def resolve_scan_backend(backend="auto", device="cpu"):
    """The backend a call on ``device`` runs with.

    An explicit ``backend`` wins; ``"auto"`` defers to the ``HF_MEDMAMBA_SCAN_BACKEND`` environment variable, and an
    unset or ``"auto"`` variable chooses by device: mamba-ssm on CUDA when it imports, the compiled CPU kernel on CPU
    when it loads, otherwise the chunked scan; while `torch.export` traces, the exportable ``"export"`` formulation.
    Forcing a backend that cannot run here raises a ``RuntimeError``.
    """
    backend = backend or "auto"
    if backend == "auto":
        backend = os.environ.get(SCAN_BACKEND_ENV, "auto").strip() or "auto"
        source = f"the environment variable {SCAN_BACKEND_ENV}"
    else:
        source = "scan_backend"
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"Unknown scan backend {backend!r} (from {source}); choose one of {', '.join(SCAN_BACKENDS)}.")
    device = torch.device(device)
    if backend in ("mamba_ssm", "cpu_kernel") and torch.compiler.is_exporting():
        raise RuntimeError(
            f"scan backend {backend!r} was forced (by {source}) but torch.export is tracing: a compiled kernel cannot "
            "be exported. Export traces the pure-PyTorch formulation 'export' (same results to float32 rounding); "
            "use scan_backend='auto' or 'export' (hf_medmamba.export switches the model to it for you)."
        )

    if backend == "auto":
        if torch.compiler.is_exporting():
            return "export"
        if device.type == "cuda" and _mamba_ssm_kernel() is not None:
            return "mamba_ssm"
        if device.type == "cpu" and _cpu_kernel() is not None:
            return "cpu_kernel"
        return "chunked"
    if backend == "mamba_ssm":
        if device.type != "cuda":
            raise RuntimeError(
                f"scan backend 'mamba_ssm' was forced (by {source}) but the tensors are on {device.type}; mamba-ssm's "
                "kernel runs only on CUDA. Move the model to a GPU or use scan_backend='auto' or 'chunked'."
            )
        if _mamba_ssm_kernel() is None:
            raise RuntimeError(
                f"scan backend 'mamba_ssm' was forced (by {source}) but `mamba_ssm` cannot be imported. Install it "
                "with `pip install hf-medmamba[cuda]` (it compiles against your CUDA toolkit), or use "
                "scan_backend='auto' or 'chunked'."
            )
    if backend == "cpu_kernel":
        if device.type != "cpu":
            raise RuntimeError(
                f"scan backend 'cpu_kernel' was forced (by {source}) but the tensors are on {device.type}. "
                "Use scan_backend='auto' or 'chunked'."
            )
        if _cpu_kernel() is None:
            raise RuntimeError(
                f"scan backend 'cpu_kernel' was forced (by {source}) but the compiled CPU kernel is not available "
                f"(no C++ compiler, {DISABLE_CPU_KERNEL_ENV} set, or a model loaded as remote code without the "
                "hf_medmamba package). Install hf-medmamba and a C++ compiler, or use scan_backend='chunked'."
            )
    return backend


def _scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    kernel = _mamba_ssm_kernel()
    B, C = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    return kernel(
        u.contiguous(),
        delta.contiguous(),
        A.contiguous(),
        B.contiguous(),
        C.contiguous(),
        D,
        z,
        delta_bias,
        delta_softplus,
        return_last_state,
    )


def _scan_cpu_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    return _cpu_kernel()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


_SCAN_FUNCTIONS = {
    "reference": selective_scan_reference,
    "chunked": selective_scan_chunked,
    "cpu_kernel": _scan_cpu_kernel,
    "mamba_ssm": _scan_mamba_ssm,
    "export": selective_scan_export,
}


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    backend="auto",
):
    """Run the selective scan (see the module docstring) on the backend `resolve_scan_backend` picks for ``u``."""
    name = resolve_scan_backend(backend, u.device)
    with torch.autocast(device_type=u.device.type, enabled=False):
        return _SCAN_FUNCTIONS[name](u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


# ----------------------------------------------------------------------------------------------------------------------
# SS2D's four-direction scan
# ----------------------------------------------------------------------------------------------------------------------


def cross_scan(x):
    """(B, E, H, W) -> (B, 4, E, L): the four scan orders, row-major, column-major, and both reversed."""
    row_major = x.flatten(2)
    col_major = x.transpose(2, 3).flatten(2)
    xs = torch.stack([row_major, col_major], dim=1)  # (B, 2, E, L)
    return torch.cat([xs, xs.flip(-1)], dim=1)


def cross_merge(ys, height, width):
    """(B, 4, E, L) in the `cross_scan` orders -> (B, E, L) row-major, summed as upstream: y0 + y2 + y1 + y3."""
    batch, _, channels, length = ys.shape

    def from_column_major(y):
        return y.view(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, length)

    return ys[:, 0] + ys[:, 2].flip(-1) + from_column_major(ys[:, 1]) + from_column_major(ys[:, 3].flip(-1))


def to_scan_orders(t, height, width):
    """(B, 4, X, L) pixel-ordered, one slice per direction -> each slice in its direction's scan order."""
    batch, _, channels, length = t.shape

    def column_major(s):
        return s.view(batch, channels, height, width).transpose(2, 3).reshape(batch, channels, length)

    return torch.stack([t[:, 0], column_major(t[:, 1]), t[:, 2].flip(-1), column_major(t[:, 3]).flip(-1)], dim=1)


def cross_selective_scan(u, delta, A, B, C, D, delta_bias, height, width, backend="auto"):
    """SS2D's scan: the four directions of an H x W grid, each with its own parameters, summed at every pixel.

    Everything is pixel-ordered (row-major): ``u`` (b, E, L) shared by the four directions; ``delta`` (b, 4E, L) and
    ``B``, ``C`` (b, 4, n, L), the direction-k projections of the pixels; ``A`` (4E, n), ``D`` and ``delta_bias``
    (4E,) with rows k * E + channel; softplus on. Returns (b, E, L) float32: the sum over the directions of their scan
    outputs, each put back at its pixels (the direction orders are those of `cross_scan`).

    The compiled CPU kernel walks the four orders in place; the export backend gathers them with one index per input;
    the other backends scan reordered copies.
    """
    name = resolve_scan_backend(backend, u.device)
    if name == "export":
        return _cross_selective_scan_export(u, delta, A, B, C, D, delta_bias, height, width)
    if name == "cpu_kernel":
        kernel = _cpu_kernel()
        if u.dtype != torch.float64 and A.shape[-1] <= kernel.max_state:
            return kernel.cross_scan(u, delta, A, B, C, D, delta_bias, height, width)
        name = "chunked"
    batch, E, length = u.shape
    K = 4
    xs = cross_scan(u.view(batch, E, height, width)).reshape(batch, K * E, length)
    deltas = to_scan_orders(delta.view(batch, K, E, length), height, width).reshape(batch, K * E, length)
    ys = selective_scan(
        xs,
        deltas,
        A,
        to_scan_orders(B, height, width),
        to_scan_orders(C, height, width),
        D=D,
        delta_bias=delta_bias,
        delta_softplus=True,
        backend=name,
    )
    return cross_merge(ys.view(batch, K, E, length), height, width)
