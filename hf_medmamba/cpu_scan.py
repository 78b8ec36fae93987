"""Loader and autograd wrapper of the fused CPU selective-scan kernel (``kernels/selective_scan_cpu.cpp``).

The C++ source ships as package data and is compiled on first use with the system C++ compiler (``$CXX``, ``c++``,
``g++`` or ``clang++``) into a per-machine cache (``$HF_MEDMAMBA_CACHE`` or ``~/.cache/hf_medmamba``); it is loaded
with ctypes, so neither PyTorch headers nor ninja are needed and a build takes about a second. This module is not part
of the remote-code files: `selective_scan` imports it inside ``try`` and falls back to the chunked scan without it.
"""

import ctypes
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import logging


logger = logging.get_logger(__name__)

KERNEL_API_VERSION = 4
SOURCE = Path(__file__).with_name("kernels") / "selective_scan_cpu.cpp"
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
    ["-O3", "-fopenmp", "-fno-math-errno"],  # compilers without -march=native
)


def cache_dir():
    root = os.environ.get("HF_MEDMAMBA_CACHE") or Path.home() / ".cache" / "hf_medmamba"
    return Path(root) / "kernels"


def _compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature():
    """What a -march=native binary depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "|".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() + platform.machine()


def build(flag_sets=_FLAG_SETS):
    """Compile the kernel if no cached build matches this source, compiler and CPU; return the library path.

    ``flag_sets`` are tried in order until one compiles (tests pass narrower instruction sets here).
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX or install g++ or clang++)")
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    errors = []
    for flags in flag_sets:
        key = hashlib.sha256(
            b"\0".join([source, version.encode(), " ".join(flags).encode(), _cpu_signature().encode()])
        )
        target = cache_dir() / key.hexdigest()[:16] / "libhf_medmamba_scan.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / ".lock", "w") as lock:  # one build at a time (e.g. torchrun workers)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():
                return target
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                out = Path(tmp) / target.name
                cmd = [compiler, *flags, "-std=c++17", "-shared", "-fPIC", str(SOURCE), "-o", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode == 0:
                    os.replace(out, target)  # atomic: other processes see the whole file or none
                    return target
                errors.append(f"{' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
    raise RuntimeError("the C++ compiler failed:\n" + "\n\n".join(errors))


class _Kernel:
    """ctypes bindings of the compiled library."""

    def __init__(self, path):
        lib = ctypes.CDLL(str(path))
        if lib.hf_medmamba_scan_api_version() != KERNEL_API_VERSION:
            raise RuntimeError(f"{path} has API version {lib.hf_medmamba_scan_api_version()}")
        i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        self._forward = lib.hf_medmamba_scan_forward
        self._forward.argtypes = [i64] * 8 + [ptr] * 7 + [i32] * 2 + [ptr] * 3 + [i32]
        self._backward = lib.hf_medmamba_scan_backward
        self._backward.argtypes = [i64] * 8 + [ptr] * 7 + [i32] * 2 + [ptr] * 10 + [i32]
        self.width = lib.hf_medmamba_scan_vector_width()
        self.max_state = lib.hf_medmamba_scan_max_state()
        self.segment = lib.hf_medmamba_scan_segment()

    def call(self, name, shape, *arrays_and_flags):
        status = (self._forward if name == "forward" else self._backward)(*shape, *arrays_and_flags)
        if status:
            raise RuntimeError(f"the CPU scan kernel rejected the shapes (b, d, L, n_pad, g, stride, H, W) = {shape}")


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class _FusedScanFunction(torch.autograd.Function):
    """The kernel with autograd. ``grid`` is None for plain scans and (height, width) for SS2D scans.

    Plain: y = <h_t, C_t> + D u_t (b, d, L) and h_L. SS2D: y (b, d / 4, L) summed over the four directions. B and C
    are views into one (b, g, L, stride) tensor ``bc`` whose rows hold B's n_pad values, then C's.
    """

    @staticmethod
    def forward(ctx, kernel, grid, u, delta, A, bc, D, delta_bias, softplus):
        b, d, L = delta.shape
        g, n_pad, stride = bc.shape[1], A.shape[1], bc.shape[3]
        height, width = grid or (0, 0)
        shape = (b, d, L, n_pad, g, stride, height, width)
        y = torch.empty_like(u)
        last = None if grid else u.new_empty(b, d, n_pad)
        needs_grad = any(ctx.needs_input_grad[2:8])
        checkpoints = u.new_empty(b, d, -(-L // kernel.segment), n_pad) if needs_grad else None
        # With softplus dt >= 0, so A <= 0 makes every exp argument <= 0 and the kernel skips a clamp.
        nonpositive = int(softplus and bool((A <= 0).all()))
        kernel.call(
            "forward",
            shape,
            _ptr(u),
            _ptr(delta),
            _ptr(A),
            _ptr(bc),
            _ptr(bc[..., n_pad:]),
            _ptr(D),
            _ptr(delta_bias),
            int(softplus),
            nonpositive,
            _ptr(y),
            _ptr(last),
            _ptr(checkpoints),
            torch.get_num_threads(),
        )
        ctx.kernel, ctx.shape, ctx.softplus, ctx.nonpositive = kernel, shape, softplus, nonpositive
        ctx.save_for_backward(u, delta, A, bc, D, delta_bias, checkpoints)
        return y if grid else (y, last)

    @staticmethod
    def backward(ctx, grad_y, grad_last=None):
        u, delta, A, bc, D, delta_bias, checkpoints = ctx.saved_tensors
        b, d, n_pad = delta.shape[0], delta.shape[1], A.shape[1]
        threads = torch.get_num_threads()
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dA, dD, dbias = u.new_empty(b, d, n_pad), u.new_empty(b, d), u.new_empty(b, d)
        dbc = u.new_zeros(threads, *bc.shape)
        # Keep every array the kernel reads alive for the whole call (a temporary inside the argument list would be
        # freed as soon as its pointer was taken).
        dy = grad_y.contiguous()
        dlast = None if grad_last is None else grad_last.contiguous()
        ctx.kernel.call(
            "backward",
            ctx.shape,
            _ptr(u),
            _ptr(delta),
            _ptr(A),
            _ptr(bc),
            _ptr(bc[..., n_pad:]),
            _ptr(D),
            _ptr(delta_bias),
            int(ctx.softplus),
            ctx.nonpositive,
            _ptr(dy),
            _ptr(dlast),
            _ptr(checkpoints),
            _ptr(du),
            _ptr(ddelta),
            _ptr(dA),
            _ptr(dD),
            _ptr(dbias),
            _ptr(dbc),
            _ptr(dbc[..., n_pad:]),
            threads,
        )
        return (
            None,
            None,
            du,
            ddelta,
            dA.sum(0),
            dbc.sum(0),
            None if D is None else dD.sum(0),
            None if delta_bias is None else dbias.sum(0),
            None,
        )


def _pack_bc(B, C, n_pad):
    """B and C (b, g, n, L) -> one (b, g, L, 2 * n_pad) tensor, each step's n values contiguous, zero-padded."""
    n = B.shape[2]
    return F.pad(torch.cat([B, C], dim=2).transpose(2, 3).unflatten(-1, (2, n)), (0, n_pad - n)).flatten(-2)


def make_scan(kernel):
    """`selective_scan`-compatible functions on ``kernel``: float64 inputs and large states go to the chunked scan."""
    from hf_medmamba.selective_scan import _check_inputs, _compute_dtype, selective_scan_chunked

    def prepare(u, delta, A, B, C, D, delta_bias):
        n = A.shape[-1]
        n_pad = n + (-n % kernel.width)  # zero lanes: decay exp(0) = 1, no input, no read-out
        A = F.pad(A.float(), (0, n_pad - n)).contiguous()
        bc = _pack_bc(B.float(), C.float(), n_pad).contiguous()
        D, delta_bias = (None if t is None else t.float().contiguous() for t in (D, delta_bias))
        return u.float().contiguous(), delta.float().contiguous(), A, bc, D, delta_bias

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        n = A.shape[-1]
        if _compute_dtype(u, delta, A, B, C, D, z, delta_bias) == torch.float64 or n > kernel.max_state:
            return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        B, C = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
        out_dtype = u.dtype
        args = prepare(u, delta, A, B, C, D, delta_bias)
        y, last = _FusedScanFunction.apply(kernel, None, *args, bool(delta_softplus))
        if z is not None:
            y = y * F.silu(z.float())
        y = y.to(out_dtype)
        return (y, last[..., :n]) if return_last_state else y

    def cross_scan(u, delta, A, B, C, D, delta_bias, height, width):
        """SS2D's four-direction scan on pixel-ordered inputs (see `selective_scan.cross_selective_scan`)."""
        args = prepare(u, delta, A, B, C, D, delta_bias)
        return _FusedScanFunction.apply(kernel, (height, width), *args, True)

    scan.cross_scan = cross_scan
    scan.max_state = kernel.max_state
    return scan


@lru_cache(maxsize=1)
def load_cpu_scan():
    """The fused CPU scan as a `selective_scan`-compatible function, or None with one log line saying why."""
    try:
        scan = make_scan(_Kernel(build()))
    except Exception as err:  # no compiler, a failed build, an unloadable library: the chunked scan takes over
        logger.warning_once(f"hf_medmamba: the fused CPU scan kernel is unavailable ({err}); using the chunked scan.")
        return None
    return scan
