"""The ``"triton"`` scan backend: the selective scan and SS2D's four-direction scan as Triton kernels, nothing to build.

Triton ships with the Linux CUDA and ROCm builds of torch and compiles kernels at run time, so this gives GPU users a
fast path without mamba-ssm's build step, and it works as remote code (the Triton import is guarded; without Triton
`triton_available` is False and a call raises a clear error).

Semantics are those of the other backends (mamba-ssm v1's ``selective_scan_fn``, see `selective_scan`), including the
dtype rule: float32, bfloat16 and float16 inputs are computed and accumulated in float32; float64 inputs are computed in
float64 (slow on most GPUs, but exact enough for gradcheck), not refused.

Design (kernels in `scan_triton_kernels`):

- One program per (batch, direction, block of channels); the block's states (BLOCK_D, n) live in registers and a
  sequential loop walks the L steps. A block never straddles a B/C group: its size is the largest power of two that
  divides the group's channel count (at most 64; on a GPU halved, down to 8, until there are two programs per SM).
- The forward stores only the state before every chunk of ``chunk_size`` steps (64 by default); the backward re-runs
  one chunk at a time from its checkpoint, parks that chunk's states in a scratch buffer (``chunk_size`` states per
  program) and walks it backwards. Extra memory is O(b·d·n·(L / chunk + chunk)), never (b, d, n, L).
- Inputs are read through their strides: no copies for views (SS2D's B and C are slices of one projection), and a
  channels-last ``u`` or ``delta`` would make the per-step loads coalesced.
- SS2D's cross mode (`cross_selective_scan_triton`) reads the four orders from a direction table ``order[k, t]`` (the
  pixel that direction k visits at step t) and adds each direction's output at its pixel: no (b, 4, d, L) copies. The
  four directions share ``u`` and the output, and the blocks of a group share dB/dC rows: those sums use atomic adds,
  so they vary in the last bits from run to run, unless ``torch.use_deterministic_algorithms(True)`` is set, which
  makes them write per-direction / per-block partial buffers and sum them (more memory, bit-reproducible).
- The forward and backward are two ops in the ``hf_medmamba`` namespace (`torch.library.custom_op`) with fake
  implementations and an autograd registration, so `torch.compile` traces a call without a graph break. A second copy
  of this file in the process (a model's remote code beside the installed package) reuses them (`scan_ops`).
- ``TRITON_INTERPRET=1``, set before Triton is imported, runs the kernels on CPU tensors in Triton's interpreter
  (slowly: milliseconds per step and program); the tests use it where there is no GPU.

Performance ideas left for a GPU session: software-pipelining the per-step loads (``tl.range(num_stages=...)``), and a
second level over chunks (scan the chunks in parallel from zero, carry the states across chunks, as the chunked
backend does) when b·d is too small to fill the GPU.

Entry points: `selective_scan_triton` (the signature of the other backends) and `cross_selective_scan_triton`. The
rule for ``"auto"``: on CUDA/ROCm tensors, mamba_ssm when it imports, else triton when `triton_available()`, else
chunked.
"""

import torch

from .scan_common import check_inputs, compute_dtype
from .scan_ops import custom_op
from .scan_triton_kernels import scan_backward_kernel, scan_forward_kernel


try:
    import triton
    import triton.language as tl
    from triton.runtime.driver import driver as _triton_driver
except Exception:  # no Triton (remote code runs without it), or one that fails to import: the backend is unavailable
    triton = None

CHUNK_SIZE = 64
"""Steps between the forward's state checkpoints (the backward re-runs one chunk at a time)."""

_MAX_BLOCK_D = 64  # channels per program, at most
_MIN_GPU_BLOCK_D = 8


def _interpreting():
    """Whether Triton's CPU interpreter is on: kernels then run on CPU tensors, slowly. ``TRITON_INTERPRET=1`` must be
    set before Triton is imported (Triton's own library functions are jitted for one mode when it imports)."""
    return triton is not None and bool(triton.knobs.runtime.interpret)


def triton_available():
    """Triton imports, and either a GPU driver is usable or the interpreter is on (``TRITON_INTERPRET=1``)."""
    if triton is None:
        return False
    if _interpreting():
        return True
    try:
        return torch.cuda.is_available() and _triton_driver.active.get_current_target() is not None
    except Exception:  # no GPU driver: Triton raises when it looks for one
        return False


def _check_runtime(u):
    if triton is None:
        raise RuntimeError(
            "scan backend 'triton' needs Triton, which does not import here. It ships with the Linux CUDA and ROCm "
            "builds of torch (elsewhere `pip install hf-medmamba[triton]`); or use scan_backend='auto' or 'chunked'."
        )
    if u.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            f"scan backend 'triton' runs on CUDA or ROCm GPUs, but the tensors are on {u.device.type}. Move the model "
            "to a GPU or use scan_backend='auto' or 'chunked' (TRITON_INTERPRET=1 runs the kernels in Triton's CPU "
            "interpreter, for tests only: it is very slow)."
        )


class _Launch:
    """Sizes of one kernel launch and the arguments that both kernels share.

    b batch elements, K directions of Dk channels each (R = K * Dk parameter rows), B/C groups of dg rows, blocks of
    ``block`` channels (a power of two dividing dg, so that a block reads one group), chunks of ``chunk`` steps.
    """

    def __init__(self, u, delta, A, B, C, D, delta_bias, z, order, softplus, chunk):
        self.dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        b, Dk, L = u.shape
        K, R, n, G = 1 if order is None else order.shape[0], delta.shape[1], A.shape[1], B.shape[1]
        dg = R // G
        block = min(dg & -dg, _MAX_BLOCK_D, max(1, 2048 // triton.next_power_of_2(n)))
        if u.device.type == "cuda":  # enough programs to fill the GPU: two per SM
            target = 2 * torch.cuda.get_device_properties(u.device).multi_processor_count
            while block > _MIN_GPU_BLOCK_D and b * R // block < target:
                block //= 2
        self.b, self.K, self.Dk, self.R, self.L, self.n, self.G, self.dg = b, K, Dk, R, L, n, G, dg
        self.block, self.grid = block, (b * K * (Dk // block),)
        D, delta_bias = (None if t is None else t.contiguous() for t in (D, delta_bias))
        z_strides = (0, 0, 0) if z is None else z.stride()
        self.inputs = (u, delta, A, B, C, D, delta_bias, z, None if order is None else order.contiguous())
        self.sizes = (L, Dk, dg, n, Dk // block, K, chunk)
        self.strides = (*u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *z_strides)
        self.meta = {
            "SOFTPLUS": bool(softplus),
            "COMPUTE": tl.float64 if self.dtype == torch.float64 else tl.float32,
            "BLOCK_D": block,
            "BLOCK_N": triton.next_power_of_2(n),
        }


def _state_buffers(u, delta, A, B, C, D, delta_bias, z, return_last, save_checkpoints, chunk):
    """The last state (b, R, n) and the chunk checkpoints (b, R, chunks, n), compute dtype; empty when unwanted."""
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    b, R, L, n = u.shape[0], delta.shape[1], u.shape[2], A.shape[1]
    last = u.new_empty((b, R, n) if return_last else (0,), dtype=dtype)
    ckpt = u.new_empty((b, R, -(-L // chunk), n) if save_checkpoints else (0,), dtype=dtype)
    return last, ckpt


# ----------------------------------------------------------------------------------------------------------------------
# The ops (defined once per process) and their implementations
# ----------------------------------------------------------------------------------------------------------------------


_FORWARD_SCHEMA = (  # the forward operator's schema
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias, Tensor? z, "
    "Tensor? order, bool softplus, bool return_last, bool save_checkpoints, int chunk) -> (Tensor, "
    "Tensor, Tensor)"
)


def _scan_forward_fake(u, delta, A, B, C, D, delta_bias, z, order, softplus, return_last, save_checkpoints, chunk):
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    y = u.new_empty(u.shape, dtype=u.dtype if order is None else dtype)
    return (y, *_state_buffers(u, delta, A, B, C, D, delta_bias, z, return_last, save_checkpoints, chunk))


def _scan_backward_fake(u, delta, A, B, C, D, delta_bias, z, order, checkpoints, dy, dlast, softplus, chunk):
    empty = u.new_empty((0,), dtype=compute_dtype(u, delta, A, B, C, D, z, delta_bias))
    grads = [u.new_empty(t.shape, dtype=t.dtype) for t in (u, delta, A, B, C)]
    return [*grads, *(empty if t is None else t.new_empty(t.shape) for t in (D, delta_bias, z))]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, z, order, softplus, return_last, _, chunk = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, z, order, output[2])
    ctx.softplus, ctx.return_last, ctx.chunk = softplus, return_last, chunk


def _backward(ctx, dy, dlast, _):
    u, delta, A, B, C, D, delta_bias, z, order, checkpoints = ctx.saved_tensors
    if checkpoints.numel() == 0:
        raise RuntimeError("triton scan: the forward ran without saving checkpoints (save_checkpoints=False).")
    dlast = dlast if ctx.return_last else None
    grads = scan_backward_op(
        u, delta, A, B, C, D, delta_bias, z, order, checkpoints, dy, dlast, ctx.softplus, ctx.chunk
    )
    optional = [g if t is not None else None for g, t in zip(grads[5:], (D, delta_bias, z))]
    return (*grads[:5], *optional, None, None, None, None, None)


@custom_op(
    "triton_scan_backward",
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias, Tensor? z, "
    "Tensor? order, Tensor checkpoints, Tensor dy, Tensor? dlast, bool softplus, int chunk) -> Tensor[]",
    fake=_scan_backward_fake,
)
def scan_backward_op(u, delta, A, B, C, D, delta_bias, z, order, checkpoints, dy, dlast, softplus, chunk):
    """Gradients of u, delta, A, B, C, D, delta_bias and z (empty for an absent input) of `scan_forward_op`."""
    _check_runtime(u)
    run = _Launch(u, delta, A, B, C, D, delta_bias, z, order, softplus, chunk)
    b, K, Dk, R, L, n, G = run.b, run.K, run.Dk, run.R, run.L, run.n, run.G
    dtype, deterministic = run.dtype, torch.are_deterministic_algorithms_enabled()
    per_group = run.dg // run.block  # blocks that share a group's dB/dC rows
    if K > 1 and deterministic:
        du = u.new_empty((b, K, Dk, L), dtype=dtype)
        du_strides = du.stride()
    else:
        du = (u.new_zeros if K > 1 else u.new_empty)((b, Dk, L), dtype=dtype)
        du_strides = (Dk * L, 0, L, 1)
    if per_group > 1 and deterministic:
        dB, dC = (u.new_empty((b, G, per_group, n, L), dtype=dtype) for _ in range(2))
        g_strides = dB.stride()
    else:
        dB, dC = ((u.new_zeros if per_group > 1 else u.new_empty)((b, G, n, L), dtype=dtype) for _ in range(2))
        g_strides = (G * n * L, n * L, 0, L, 1)
    ddelta = u.new_empty((b, R, L), dtype=dtype)
    dA = u.new_empty((b, R, n), dtype=dtype)
    dD, dbias = (u.new_empty((b, R) if t is not None else (0,), dtype=dtype) for t in (D, delta_bias))
    dz = u.new_empty((b, Dk, L) if z is not None else (0,), dtype=dtype)
    scratch = u.new_empty((run.grid[0] * chunk * run.block * run.meta["BLOCK_N"],), dtype=dtype)
    scan_backward_kernel[run.grid](
        *run.inputs,
        checkpoints,
        dy,
        None if dlast is None else dlast.contiguous(),
        scratch,
        du,
        ddelta,
        dA,
        dB,
        dC,
        dD,
        dbias,
        dz,
        *run.sizes,
        *run.strides,
        *dy.stride(),
        *du_strides,
        *g_strides,
        ATOMIC_U=K > 1 and du.dim() == 3,
        ATOMIC_BC=per_group > 1 and dB.dim() == 4,
        **run.meta,
    )
    if du.dim() == 4:
        du = du.sum(1)
    if dB.dim() == 5:
        dB, dC = dB.sum(2), dC.sum(2)
    return [
        du.to(u.dtype),
        ddelta.to(delta.dtype),
        dA.sum(0).to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else dD,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else dbias,
        dz.to(z.dtype) if z is not None else dz,
    ]


@custom_op("triton_scan_forward", _FORWARD_SCHEMA, fake=_scan_forward_fake, autograd=(_backward, _setup_context))
def scan_forward_op(u, delta, A, B, C, D, delta_bias, z, order, softplus, return_last, save_checkpoints, chunk):
    """y, the last state and the chunk checkpoints. Without ``order``: the plain scan, y (b, d, L) in u's dtype.
    With ``order`` (K, L): K directions over a shared u (b, Dk, L), y (b, Dk, L) summed over them, compute dtype."""
    _check_runtime(u)
    run = _Launch(u, delta, A, B, C, D, delta_bias, z, order, softplus, chunk)
    last, ckpt = _state_buffers(u, delta, A, B, C, D, delta_bias, z, return_last, save_checkpoints, chunk)
    b, K, Dk, L = run.b, run.K, run.Dk, run.L
    if K == 1:
        y = buffer = u.new_empty((b, Dk, L))
        y_strides = (Dk * L, 0, L, 1)
    elif torch.are_deterministic_algorithms_enabled():  # one slice per direction, summed below
        buffer = u.new_empty((b, K, Dk, L), dtype=run.dtype)
        y_strides = buffer.stride()
    else:  # the directions add into one output
        y = buffer = u.new_zeros((b, Dk, L), dtype=run.dtype)
        y_strides = (Dk * L, 0, L, 1)
    scan_forward_kernel[run.grid](
        *run.inputs,
        buffer,
        last if return_last else None,
        ckpt if save_checkpoints else None,
        *run.sizes,
        *run.strides,
        *y_strides,
        ATOMIC_Y=K > 1 and buffer.dim() == 3,
        **run.meta,
    )
    if buffer.dim() == 4:
        y = buffer.sum(1)
    return y, last, ckpt


# ----------------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------------


def _needs_checkpoints(chunk_size, *tensors):
    """Whether the forward must keep checkpoints for a backward (and a check of ``chunk_size``)."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer of at least 1, got {chunk_size!r}.")
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan_triton(
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
    chunk_size=CHUNK_SIZE,
):
    """The selective scan (signature and semantics of `selective_scan.selective_scan`) on the Triton kernels."""
    B, C = check_inputs(u, delta, A, B, C, D, z, delta_bias)
    save = _needs_checkpoints(chunk_size, u, delta, A, B, C, D, z, delta_bias)
    y, last, _ = scan_forward_op(
        u, delta, A, B, C, D, delta_bias, z, None, bool(delta_softplus), bool(return_last_state), save, chunk_size
    )
    return (y, last) if return_last_state else y


def cross_selective_scan_triton(u, delta, A, B, C, D, delta_bias, order, chunk_size=CHUNK_SIZE):
    """SS2D's scan (the contract of `selective_scan.cross_selective_scan`) with the directions read from ``order``.

    ``order`` (K, L), int32 or int64: ``order[k, t]`` is the pixel (row-major index) that direction k visits at step
    t; each row must be a permutation of 0..L-1. ``u`` (b, E, L) is shared by the K directions; ``delta`` (b, K*E, L),
    ``B``/``C`` (b, K, n, L), ``A`` (K*E, n), ``D``/``delta_bias`` (K*E,), softplus on. Returns (b, E, L) in the compute
    dtype (float32, or float64 for float64 inputs): the sum of the directions' outputs, each at its pixels.
    """
    B, C = check_inputs(delta, delta, A, B, C, D, None, delta_bias)
    if u.dim() != 3 or order.dim() != 2:
        raise ValueError(
            f"cross scan: u must be (batch, channels, length) and order (directions, length), got {tuple(u.shape)} "
            f"and {tuple(order.shape)}."
        )
    K, L = order.shape
    b, KE, _ = delta.shape
    if u.shape != (b, KE // K, L) or KE % K or B.shape[1] != K or delta.shape[2] != L:
        raise ValueError(
            f"cross scan: with {K} directions (order {tuple(order.shape)}), u must be (b, E, L), delta (b, {K}*E, L) "
            f"and B, C (b, {K}, n, L); got u {tuple(u.shape)}, delta {tuple(delta.shape)}, B {tuple(B.shape)}."
        )
    if order.dtype not in (torch.int32, torch.int64) or order.device != u.device:
        raise ValueError(
            f"cross scan: order must be an int32 or int64 tensor on {u.device}, got {order.dtype} on {order.device}."
        )
    save = _needs_checkpoints(chunk_size, u, delta, A, B, C, D, delta_bias)
    y, _, _ = scan_forward_op(u, delta, A, B, C, D, delta_bias, None, order, True, False, save, chunk_size)
    return y
