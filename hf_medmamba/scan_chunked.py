"""The chunked backend: a two-level chunked selective scan in pure PyTorch with a hand-written backward.

It runs on any device and is what ``"auto"`` falls back to where no compiled kernel runs (Hub folders loaded as
remote code without the package, Apple MPS, Windows, GPUs without mamba-ssm or Triton). Its forward and backward are
operators of the package's custom-op scheme (`scan_ops`): `torch.compile` treats each as one node.
"""

import math

import torch
import torch.nn.functional as F

from .scan_common import LOG_DECAY_FLOOR, skip_and_gate, step_sizes
from .scan_ops import custom_op


# Elements of one block buffer of the chunked scan (4 MiB in float32). It bounds the extra memory of a call.
_BLOCK_ELEMENTS = 1 << 20

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
        return out.clamp_(min=LOG_DECAY_FLOOR).exp_()

    def drive(self, t0, t1, out):
        """dt * u * B for steps t0..t1 of every chunk, into ``out``."""
        return torch.mul(self.dtu[t0:t1].unsqueeze(-2), self.B[t0:t1].unsqueeze(-1), out=out)

    def chunk_decay(self):
        """exp(A * sum of dt over the chunk): the factor that carries a state through a whole chunk."""
        return torch.exp((self.A * self.dt.sum(0).unsqueeze(-2)).clamp_(min=LOG_DECAY_FLOOR))

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


def _forward_fake(u, dt, A, B, C):
    b, d, L = u.shape
    g, n = B.shape[1], B.shape[2]
    if isinstance(L, int):
        nc = -(-L // _chunk_length(L))
    else:  # a symbolic length (dynamic shapes): the number of chunks is only known when the op runs
        nc = torch.library.get_ctx().new_dynamic_size()
    return u.new_empty(b, d, L), u.new_empty(b, d, n), u.new_empty(b, g, nc, n, d // g)


def _backward_fake(u, dt, A, B, C, start, grad_y, grad_last):
    return [torch.empty_like(t) for t in (u, dt, A, B, C)]


@custom_op(
    "chunked_scan_backward",
    "(Tensor u, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor start, Tensor grad_y, Tensor grad_last) -> Tensor[]",
    fake=_backward_fake,
)
def _chunked_scan_backward(u, dt, A, B, C, start, grad_y, grad_last):
    """Gradients of u, dt, A, B and C of `_chunked_scan_forward` (see `_chunked_backward`)."""
    lay = _ChunkLayout(u, dt, A, B, C)
    grad_dtu, grad_dt_a, grad_A, grad_B, grad_C = _chunked_backward(lay, start, grad_y.contiguous(), grad_last)
    return [grad_dtu * dt, grad_dtu * u + grad_dt_a, grad_A, grad_B.contiguous(), grad_C.contiguous()]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output[2])


def _backward(ctx, grad_y, grad_last, _):
    u, dt, A, B, C, start = ctx.saved_tensors
    return tuple(_chunked_scan_backward(u, dt, A, B, C, start, grad_y, grad_last))


@custom_op(
    "chunked_scan_forward",
    "(Tensor u, Tensor dt, Tensor A, Tensor B, Tensor C) -> (Tensor, Tensor, Tensor)",
    fake=_forward_fake,
    autograd=(_backward, _setup_context),
)
def _chunked_scan_forward(u, dt, A, B, C):
    """y_core = <h_t, C_t> (b, d, L), h_L (b, d, n) and the chunk start states a backward needs, for given step sizes
    ``dt`` (softplus, bias, D and z are applied around it). An operator, so that `torch.compile` sees one node, not
    the Python loops inside."""
    y, last, start = _chunked_forward(_ChunkLayout(u, dt, A, B, C))
    return y.contiguous(), last.contiguous(), start


def scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """``(y, h_L)`` for compute-dtype inputs with grouped ``B``, ``C`` (b, g, n, L) (see `scan_common`)."""
    u, A, B, C = (t.contiguous() for t in (u, A, B, C))
    dt = step_sizes(delta.contiguous(), delta_bias, delta_softplus).contiguous()
    y, last, _ = _chunked_scan_forward(u, dt, A, B, C)
    return skip_and_gate(y, u, D, z), last
