"""The optional compiled scan kernels, found at call time: mamba-ssm's CUDA kernel and the package's CPU kernel.

Neither is required. mamba-ssm is used only when it imports (``pip install hf-medmamba[cuda]``); the CPU kernel only
when the installed hf_medmamba package provides a loader with this file's `KERNEL_INTERFACE` (a Hub folder's remote
code may run beside another version of the package) and a C++ compiler builds it. Both run as operators of the
package's custom-op scheme (`scan_ops`), so `torch.compile` sees one node per scan; mamba-ssm's backward runs its
forward again under autograd (its intermediate states stay inside its own autograd function).
"""

import os

import torch
import torch.nn.functional as F

from .scan_backends import DISABLE_CPU_KERNEL_ENV, KERNEL_INTERFACE
from .scan_ops import autograd_inside_op, custom_op


def _loaded_once(load):
    """``load()`` run at the first call, outside any `torch.compile` trace, and remembered (``.cache_clear()``
    forgets it): compiled code then reads the remembered kernel without a graph break."""
    memo = []
    load_eagerly = torch.compiler.disable(load)

    def get():
        if not memo:
            memo.append(load_eagerly())
        return memo[0]

    get.cache_clear = memo.clear
    get.__doc__ = load.__doc__
    return get


@_loaded_once
def mamba_ssm_kernel():
    """mamba-ssm's ``selective_scan_fn``, or None when mamba_ssm does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA build raising at import
        return None
    return selective_scan_fn


@_loaded_once
def cpu_kernel():
    """The compiled CPU scan (`hf_medmamba.kernels.cpu_scan.CpuScan`), or None: disabled by the environment, the
    package not installed (remote code alone), another generation of it, or no compiler."""
    if os.environ.get(DISABLE_CPU_KERNEL_ENV, "0").lower() in ("1", "true", "yes"):
        return None
    try:
        from hf_medmamba.kernels import cpu_scan
    except Exception:
        return None
    if getattr(cpu_scan, "KERNEL_INTERFACE", None) != KERNEL_INTERFACE:
        return None
    return cpu_scan.load_cpu_scan()


def _mamba_fake(u, delta, A, B, C, D, z, delta_bias, softplus):
    return u.new_empty(u.shape), u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)


def _mamba_backward_fake(u, delta, A, B, C, D, z, delta_bias, grad_y, grad_last, softplus):
    return [torch.empty_like(t) if t is not None else u.new_empty(0) for t in (u, delta, A, B, C, D, z, delta_bias)]


@custom_op(
    "mamba_ssm_scan_backward",
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
    "Tensor grad_y, Tensor grad_last, bool softplus) -> Tensor[]",
    fake=_mamba_backward_fake,
)
def _mamba_backward(u, delta, A, B, C, D, z, delta_bias, grad_y, grad_last, softplus):
    """Gradients of every input (empty for an absent one): mamba-ssm's own backward, reached by running its forward
    again with autograd (its kernel keeps its intermediate states internal to its autograd function)."""
    inputs = [None if t is None else t.detach().requires_grad_() for t in (u, delta, A, B, C, D, z, delta_bias)]
    with autograd_inside_op():
        y, last = mamba_ssm_kernel()(*(t.contiguous() if t is not None else None for t in inputs), softplus, True)
        present = [t for t in inputs if t is not None]
        grads = iter(torch.autograd.grad((y, last), present, (grad_y, grad_last), allow_unused=True))
    out = []
    for t in inputs:
        grad = None if t is None else next(grads)
        out.append(u.new_empty(0) if t is None else torch.zeros_like(t) if grad is None else grad)
    return out


def _mamba_setup_context(ctx, inputs, output):
    *tensors, softplus = inputs
    ctx.present = [t is not None for t in tensors]
    ctx.save_for_backward(*tensors)
    ctx.softplus = softplus


def _mamba_autograd(ctx, grad_y, grad_last):
    tensors = ctx.saved_tensors
    grad_last = torch.zeros_like(grad_last) if grad_last is None else grad_last
    grads = _mamba_backward(*tensors, grad_y, grad_last, ctx.softplus)
    return (*(g if present else None for g, present in zip(grads, ctx.present)), None)


@custom_op(
    "mamba_ssm_scan_forward",
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
    "bool softplus) -> (Tensor, Tensor)",
    fake=_mamba_fake,
    autograd=(_mamba_autograd, _mamba_setup_context),
)
def _mamba_forward(u, delta, A, B, C, D, z, delta_bias, softplus):
    """``(y, h_L)`` from mamba-ssm's ``selective_scan_fn`` (float32 CUDA tensors, grouped ``B``, ``C``)."""
    with torch.no_grad():
        y, last = mamba_ssm_kernel()(
            *(t.contiguous() if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)), softplus, True
        )
    return y, last.float()


def scan_mamba_ssm(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """``(y, h_L)`` from mamba-ssm's kernel, as an operator of the package's custom-op scheme (`scan_ops`)."""
    return _mamba_forward(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))


def scan_cpu_kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """``(y, h_L)`` from the compiled CPU kernel (float32, ``d_state <= max_state``); the gate is applied here."""
    y, last = cpu_kernel().scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if z is not None:
        y = y * F.silu(z)
    return y, last
