"""The optional compiled scan kernels, found at call time: mamba-ssm's CUDA kernel and the package's CPU kernel.

Neither is required. mamba-ssm is used only when it imports (``pip install hf-medmamba[cuda]``); the CPU kernel only
when the installed hf_medmamba package provides a loader with this file's `KERNEL_INTERFACE` (a Hub folder's remote
code may run beside another version of the package) and a C++ compiler builds it.
"""

import os
from functools import lru_cache

import torch.nn.functional as F

from .scan_backends import DISABLE_CPU_KERNEL_ENV, KERNEL_INTERFACE


@lru_cache(maxsize=1)
def mamba_ssm_kernel():
    """mamba-ssm's ``selective_scan_fn``, or None when mamba_ssm does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA build raising at import
        return None
    return selective_scan_fn


@lru_cache(maxsize=1)
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


def scan_mamba_ssm(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """``(y, h_L)`` from mamba-ssm's kernel (float32 CUDA tensors, grouped ``B``, ``C``)."""
    return mamba_ssm_kernel()(
        u.contiguous(),
        delta.contiguous(),
        A.contiguous(),
        B.contiguous(),
        C.contiguous(),
        D,
        z,
        delta_bias,
        delta_softplus,
        True,
    )


def scan_cpu_kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """``(y, h_L)`` from the compiled CPU kernel (float32, ``d_state <= max_state``); the gate is applied here."""
    y, last = cpu_kernel().scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if z is not None:
        y = y * F.silu(z)
    return y, last
