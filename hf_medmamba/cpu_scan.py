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

KERNEL_API_VERSION = 3
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


def build(verbose=False):
    """Compile the kernel if no cached build matches this source, compiler and CPU; return the library path."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX or install g++ or clang++)")
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    errors = []
    for flags in _FLAG_SETS:
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
        self.forward = lib.hf_medmamba_scan_forward
        self.forward.argtypes = [i64] * 5 + [ptr] * 7 + [i32] * 2 + [ptr] * 3 + [i32]
        self.backward = lib.hf_medmamba_scan_backward
        self.backward.argtypes = [i64] * 5 + [ptr] * 7 + [i32] * 2 + [ptr] * 10 + [i32]
        self.width = lib.hf_medmamba_scan_vector_width()
        self.max_state = lib.hf_medmamba_scan_max_state()
        self.segment = lib.hf_medmamba_scan_segment()


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class _FusedScanFunction(torch.autograd.Function):
    """y = <h_t, C_t> + D u_t and h_L, from raw delta (bias and softplus applied inside the kernel).

    A is (d, n_pad) and B, C are (b, g, L, n_pad), zero-padded to the kernel's vector width.
    """

    @staticmethod
    def forward(ctx, kernel, u, delta, A, B, C, D, delta_bias, softplus):
        # With softplus dt >= 0, so A <= 0 makes every exp argument <= 0 and the kernel skips a clamp.
        nonpositive = int(softplus and bool((A <= 0).all()))
        b, d, L = u.shape
        g, n_pad = B.shape[1], B.shape[3]
        y = torch.empty_like(u)
        last = u.new_empty(b, d, n_pad)
        needs_grad = any(ctx.needs_input_grad[1:8])
        checkpoints = u.new_empty(b, d, -(-L // kernel.segment), n_pad) if needs_grad else None

        status = kernel.forward(
            b,
            d,
            L,
            n_pad,
            g,
            _ptr(u),
            _ptr(delta),
            _ptr(A),
            _ptr(B),
            _ptr(C),
            _ptr(D),
            _ptr(delta_bias),
            int(softplus),
            nonpositive,
            _ptr(y),
            _ptr(last),
            _ptr(checkpoints),
            torch.get_num_threads(),
        )
        if status:
            raise RuntimeError(f"the CPU scan kernel rejected shapes b={b} d={d} L={L} n_pad={n_pad} g={g}")
        ctx.kernel, ctx.softplus, ctx.nonpositive = kernel, softplus, nonpositive
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, checkpoints)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, delta, A, B, C, D, delta_bias, checkpoints = ctx.saved_tensors
        b, d, L = u.shape
        g, n_pad = B.shape[1], B.shape[3]
        threads = torch.get_num_threads()
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dA, dD, dbias = u.new_empty(b, d, n_pad), u.new_empty(b, d), u.new_empty(b, d)
        dB, dC = u.new_zeros(threads, *B.shape), u.new_zeros(threads, *C.shape)
        status = ctx.kernel.backward(
            b,
            d,
            L,
            n_pad,
            g,
            _ptr(u),
            _ptr(delta),
            _ptr(A),
            _ptr(B),
            _ptr(C),
            _ptr(D),
            _ptr(delta_bias),
            int(ctx.softplus),
            ctx.nonpositive,
            _ptr(grad_y.contiguous()),
            _ptr(grad_last.contiguous()),
            _ptr(checkpoints),
            _ptr(du),
            _ptr(ddelta),
            _ptr(dA),
            _ptr(dD),
            _ptr(dbias),
            _ptr(dB),
            _ptr(dC),
            threads,
        )
        if status:
            raise RuntimeError(f"the CPU scan kernel rejected shapes b={b} d={d} L={L} n_pad={n_pad} g={g}")
        return (
            None,
            du,
            ddelta,
            dA.sum(0),
            dB.sum(0),
            dC.sum(0),
            None if D is None else dD.sum(0),
            None if delta_bias is None else dbias.sum(0),
            None,
        )


def make_scan(kernel):
    """A `selective_scan`-compatible function on ``kernel``; float64 inputs and large states go to the chunked scan."""
    from hf_medmamba.selective_scan import _check_inputs, _compute_dtype, selective_scan_chunked

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        n = A.shape[-1]
        if _compute_dtype(u, delta, A, B, C, D, z, delta_bias) == torch.float64 or n > kernel.max_state:
            return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        B, C = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
        out_dtype = u.dtype
        pad = -n % kernel.width  # zero lanes: decay exp(0) = 1, no input, no read-out
        u, delta = u.float().contiguous(), delta.float().contiguous()
        A = F.pad(A.float(), (0, pad)).contiguous()
        B = F.pad(B.float().transpose(2, 3), (0, pad)).contiguous()  # (b, g, L, n_pad)
        C = F.pad(C.float().transpose(2, 3), (0, pad)).contiguous()
        D, delta_bias = (None if t is None else t.float().contiguous() for t in (D, delta_bias))
        y, last = _FusedScanFunction.apply(kernel, u, delta, A, B, C, D, delta_bias, bool(delta_softplus))
        if z is not None:
            y = y * F.silu(z.float())
        y = y.to(out_dtype)
        return (y, last[..., :n]) if return_last_state else y

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
