"""The selective scan (Mamba's S6 recurrence) behind one dispatch point.

`selective_scan` has the semantics of mamba-ssm's ``selective_scan_fn`` (v1.x) for real ``A`` and input-dependent
``B``/``C`` (the recurrence is written out in `scan_reference`); `cross_selective_scan` is SS2D's four-direction scan
of an H x W grid (the directions are defined in `scan_directions`). Backends, one module each:

- ``"reference"`` (`scan_reference`): the sequential recurrence; the readable definition and the test oracle.
- ``"chunked"`` (`scan_chunked`): a two-level chunked scan in pure PyTorch with a hand-written backward, any device.
- ``"cpu_kernel"`` (`scan_kernels`): the compiled CPU kernel of the installed package.
- ``"mamba_ssm"`` (`scan_kernels`): mamba-ssm's CUDA kernel.
- ``"triton"`` (`scan_triton`): Triton kernels, compiled at run time (no build step) on CUDA and ROCm GPUs.
- ``"export"`` (`scan_export`): a scan of a pure step function that `torch.export` and the ONNX exporter can trace.

Choosing the backend (`resolve_scan_backend`, the one rule; the models keep their choice in one place,
``config.scan_backend``, and resolve it once per SS2D call):

1. An explicit backend is used as given. Forcing one that cannot run here raises a ``RuntimeError`` that says why.
2. ``"auto"`` (every config's default) stands for the ``HF_MEDMAMBA_SCAN_BACKEND`` environment variable when it is
   set to a backend name.
3. Otherwise ``"auto"`` chooses per call, from the tensors' device, never at import time: ``"export"`` while
   `torch.export` traces; on CUDA (and ROCm) ``"mamba_ssm"`` when it imports, else ``"triton"`` when Triton imports
   and has a GPU driver; on CPU ``"cpu_kernel"`` when it builds (and ``HF_MEDMAMBA_DISABLE_CPU_KERNEL`` is not set);
   else ``"chunked"``.

The compiled CPU kernel runs float32 with ``d_state`` up to its limit; other calls on it (float64 inputs in gradcheck,
larger states) run on ``"chunked"``. Dtype: see `scan_common` (applied here, once: autocast off, inputs cast).
"""

import os

import torch

from .scan_backends import DISABLE_CPU_KERNEL_ENV, SCAN_BACKEND_ENV, SCAN_BACKENDS
from .scan_chunked import scan_chunked
from .scan_common import cast, check_inputs, compute_dtype
from .scan_directions import MERGE_ORDER, NUM_DIRECTIONS, cross_merge, scan_orders, to_scan_orders
from .scan_export import cross_scan_export, scan_export
from .scan_kernels import cpu_kernel, mamba_ssm_kernel, scan_cpu_kernel, scan_mamba_ssm
from .scan_reference import scan_reference
from .scan_triton import cross_selective_scan_triton, selective_scan_triton, triton_available


def _scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)


_SCANS = {
    "triton": _scan_triton,
    "reference": scan_reference,
    "chunked": scan_chunked,
    "cpu_kernel": scan_cpu_kernel,
    "mamba_ssm": scan_mamba_ssm,
    "export": scan_export,
}


# The compiled backends: the device they run on, and what is missing when `_available` finds nothing.
# Run-time compiled (Triton) or built ahead (mamba-ssm, the CPU kernel): none can be traced by torch.export.
_COMPILED = {
    "mamba_ssm": (
        "cuda",
        "`mamba_ssm` cannot be imported. Install it with `pip install hf-medmamba[cuda]` (it compiles against your "
        "CUDA toolkit), or use scan_backend='auto' or 'chunked'.",
    ),
    "triton": (
        None,  # CUDA / ROCm tensors; CPU tensors only in Triton's interpreter (tests), which the backend checks
        "Triton does not import or finds no GPU driver. It ships with the Linux CUDA and ROCm builds of torch "
        "(elsewhere `pip install hf-medmamba[triton]`); or use scan_backend='auto' or 'chunked'.",
    ),
    "cpu_kernel": (
        "cpu",
        f"the compiled CPU kernel is not available (no C++ compiler, {DISABLE_CPU_KERNEL_ENV} set, or a model loaded "
        "as remote code without the hf_medmamba package). Install hf-medmamba and a C++ compiler, or use "
        "scan_backend='chunked'.",
    ),
}


def _available(backend):
    """Whether the compiled backend can run in this process (mamba-ssm imports, Triton has a driver, the CPU kernel
    builds)."""
    if backend == "mamba_ssm":
        return mamba_ssm_kernel() is not None
    if backend == "triton":
        return triton_available()
    return cpu_kernel() is not None


@torch.compiler.assume_constant_result  # a compiled model bakes the choice in (it guards on config.scan_backend)
def resolve_scan_backend(backend="auto", device="cpu"):
    """The backend a call on ``device`` runs with (the rule is in the module docstring)."""
    backend = backend or "auto"
    if backend == "auto":
        backend = os.environ.get(SCAN_BACKEND_ENV, "auto").strip() or "auto"
        source = f"the environment variable {SCAN_BACKEND_ENV}"
    else:
        source = "scan_backend"
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"Unknown scan backend {backend!r} (from {source}); choose one of {', '.join(SCAN_BACKENDS)}.")
    device = torch.device(device)
    exporting = torch.compiler.is_exporting()
    if backend == "auto":
        if exporting:
            return "export"
        if device.type == "cuda" and mamba_ssm_kernel() is not None:
            return "mamba_ssm"
        if device.type == "cuda" and triton_available():
            return "triton"
        if device.type == "cpu" and cpu_kernel() is not None:
            return "cpu_kernel"
        return "chunked"
    if backend in _COMPILED and exporting:
        raise RuntimeError(
            f"scan backend {backend!r} was forced (by {source}) but torch.export is tracing: a compiled kernel cannot "
            "be exported. Export traces the pure-PyTorch formulation 'export' (same results to float32 rounding); "
            "use scan_backend='auto' or 'export' (hf_medmamba.tools.export switches the model to it for you)."
        )
    if backend in _COMPILED:
        device_type, missing = _COMPILED[backend]
        if device_type is not None and device.type != device_type:
            raise RuntimeError(
                f"scan backend {backend!r} was forced (by {source}) but the tensors are on {device.type}; it runs only "
                f"on {device_type.upper()}. Move the model there or use scan_backend='auto' or 'chunked'."
            )
        if not _available(backend):
            raise RuntimeError(f"scan backend {backend!r} was forced (by {source}) but {missing}")
    return backend


def _runnable(name, dtype, d_state):
    """``name``, or ``"chunked"`` where the compiled CPU kernel cannot take the call (float64, large states)."""
    if name == "cpu_kernel" and (dtype != torch.float32 or d_state > cpu_kernel().max_state):
        return "chunked"
    return name


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, backend="auto"
):
    """mamba-ssm's ``selective_scan_fn`` on the backend `resolve_scan_backend` picks for ``u``.

    Shapes: ``u, delta, z`` (b, d, L); ``A`` (d, n); ``B, C`` (b, n, L) or grouped (b, g, n, L); ``D, delta_bias``
    (d,). Returns y (b, d, L) in ``u``'s dtype, and with ``return_last_state`` also h_L (b, d, n) in the compute dtype.
    """
    name = resolve_scan_backend(backend, u.device)
    B, C = check_inputs(u, delta, A, B, C, D, z, delta_bias)
    with torch.autocast(device_type=u.device.type, enabled=False):
        dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        inputs = [cast(t, dtype) for t in (u, delta, A, B, C, D, z, delta_bias)]
        y, last = _SCANS[_runnable(name, dtype, A.shape[1])](*inputs, delta_softplus)
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def cross_selective_scan(u, delta, A, B, C, D, delta_bias, height, width, backend="auto"):
    """SS2D's scan: the four directions of an H x W grid, each with its own parameters, summed at every pixel.

    Everything is pixel-ordered (row-major): ``u`` (b, E, L) shared by the four directions; ``delta`` (b, 4E, L) and
    ``B``, ``C`` (b, 4, n, L), the direction-k projections of the pixels; ``A`` (4E, n), ``D`` and ``delta_bias``
    (4E,) with rows k * E + channel; softplus on. Returns (b, E, L) in the compute dtype (float32, or float64): the
    sum over the directions of their scan outputs, each put back at its pixels (`scan_directions`).

    The compiled CPU kernel walks the four orders in place, the export backend gathers them with one index per input;
    the other backends scan reordered copies.
    """
    name = resolve_scan_backend(backend, u.device)
    with torch.autocast(device_type=u.device.type, enabled=False):
        dtype = compute_dtype(u, delta, A, B, C, D, delta_bias)
        u, delta, A, B, C, D, delta_bias = (cast(t, dtype) for t in (u, delta, A, B, C, D, delta_bias))
        name = _runnable(name, dtype, A.shape[1])
        if name == "cpu_kernel":
            walk = scan_orders(height, width)
            return cpu_kernel().cross_scan(u, delta, A, B, C, D, delta_bias, height, width, walk, MERGE_ORDER)
        if name == "export":
            return cross_scan_export(u, delta, A, B, C, D, delta_bias, height, width)
        if name == "triton":
            walk = scan_orders(height, width, u.device)
            return cross_selective_scan_triton(u, delta, A, B, C, D, delta_bias, walk)
        batch, E, length = u.shape
        K = NUM_DIRECTIONS
        xs = to_scan_orders(u.unsqueeze(1).expand(batch, K, E, length), height, width).reshape(batch, K * E, length)
        deltas = to_scan_orders(delta.view(batch, K, E, length), height, width).reshape(batch, K * E, length)
        Bs, Cs = to_scan_orders(B, height, width), to_scan_orders(C, height, width)
        ys, _ = _SCANS[name](xs, deltas, A, Bs, Cs, D, None, delta_bias, True)
        return cross_merge(ys.view(batch, K, E, length), height, width)
