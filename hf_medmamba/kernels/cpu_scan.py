"""Loader and autograd wrapper of the fused CPU selective-scan kernel (``selective_scan_cpu.cpp`` beside it).

The C++ source ships as package data and is compiled on first use with the system C++ compiler (``$CXX``, ``c++``,
``g++`` or ``clang++``) into a per-machine cache (``$HF_MEDMAMBA_CACHE`` or ``~/.cache/hf_medmamba``); it is loaded
with ctypes, so neither PyTorch headers nor ninja are needed and a build takes about a second. Both entry points take
one `ScanArgs` struct of named fields; `_Library` checks the library's ABI version (read from the source, its one
literal) and the struct's size before any call, so a mismatch raises instead of crashing.

Not part of the remote-code files: the scan dispatch (`hf_medmamba.scan_kernels`) imports it inside ``try`` and runs
the chunked scan without it. It takes prepared inputs (float32, grouped B/C) and, for SS2D, the walk tables of
`hf_medmamba.scan_directions`; it imports nothing else of the package.
"""

import ctypes
import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import logging

from ..scan_backends import KERNEL_INTERFACE  # noqa: F401  (the dispatch checks the installed loader's version)
from ..scan_ops import custom_op


logger = logging.get_logger(__name__)

SOURCE = Path(__file__).with_name("selective_scan_cpu.cpp")
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


def abi_version():
    """The ABI version the shipped source declares (``HF_MEDMAMBA_SCAN_ABI_VERSION``, its only literal)."""
    match = re.search(r"#define HF_MEDMAMBA_SCAN_ABI_VERSION (\d+)", SOURCE.read_text())
    if match is None:
        raise RuntimeError(f"{SOURCE} does not declare HF_MEDMAMBA_SCAN_ABI_VERSION")
    return int(match.group(1))


_i64, _i32, _ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p


class ScanArgs(ctypes.Structure):
    """The kernel's one argument (``struct ScanArgs`` in the C++ source), field by field."""

    _fields_ = [
        ("struct_size", _i64),
        *((name, _i64) for name in ("b", "d", "L", "n_pad", "g", "bc_stride", "height", "width")),
        ("walk", _ptr),
        ("merge", _ptr),
        *((name, _ptr) for name in ("u", "delta", "A", "B", "C", "D", "delta_bias")),
        *((name, _i32) for name in ("softplus", "nonpositive", "threads", "unused")),
        *((name, _ptr) for name in ("y", "last", "checkpoints", "dy", "dlast")),
        *((name, _ptr) for name in ("du", "ddelta", "dA_part", "dD_part", "dbias_part", "dB_part", "dC_part")),
    ]


class _Library:
    """The compiled library, checked against this loader before its first call."""

    def __init__(self, path):
        lib = ctypes.CDLL(str(path))
        expected = abi_version()
        found = lib.hf_medmamba_scan_abi_version()
        lib.hf_medmamba_scan_args_size.restype = _i64
        size = lib.hf_medmamba_scan_args_size()
        if found != expected or size != ctypes.sizeof(ScanArgs):
            raise RuntimeError(
                f"{path}: ABI version {found} with a {size}-byte ScanArgs, but this loader expects version {expected} "
                f"with {ctypes.sizeof(ScanArgs)} bytes (a stale build or a mismatched loader)"
            )
        self._entry = {"forward": lib.hf_medmamba_scan_forward, "backward": lib.hf_medmamba_scan_backward}
        for fn in self._entry.values():
            fn.argtypes, fn.restype = [ctypes.POINTER(ScanArgs)], ctypes.c_int
        self.width = lib.hf_medmamba_scan_vector_width()
        self.max_state = lib.hf_medmamba_scan_max_state()
        self.segment = lib.hf_medmamba_scan_segment()

    def call(self, entry, **fields):
        """Run ``entry`` ("forward" or "backward"); tensors become pointers (None: null), the rest is copied."""
        args = ScanArgs(struct_size=ctypes.sizeof(ScanArgs))
        for name, value in fields.items():
            setattr(args, name, value.data_ptr() if torch.is_tensor(value) else value)
        status = self._entry[entry](ctypes.byref(args))
        if status:
            shape = {k: fields[k] for k in ("b", "d", "L", "n_pad", "g", "bc_stride", "height", "width")}
            raise RuntimeError(f"the CPU scan kernel refused the call (status {status}): {shape}")


# Libraries the operators can call, by index: the operators' arguments are tensors and numbers, not Python objects.
_LIBRARIES = []


def _input_fields(walk, merge, u, delta, A, bc, D, delta_bias, softplus, nonpositive, n_pad):
    """The `ScanArgs` input fields both passes share (B and C are the two halves of each row of ``bc``)."""
    return {
        "walk": walk,
        "merge": merge,
        "u": u,
        "delta": delta,
        "A": A,
        "B": bc,
        "C": bc[..., n_pad:],
        "D": D,
        "delta_bias": delta_bias,
        "softplus": int(softplus),
        "nonpositive": nonpositive,
    }


def _shape(delta, A, bc, height, width):
    b, d, L = delta.shape
    return {"b": b, "d": d, "L": L, "n_pad": A.shape[1], "g": bc.shape[1], "bc_stride": bc.shape[3]} | {
        "height": height,
        "width": width,
    }


def _nonpositive(A, softplus):
    """1 when every exp argument is known to be <= 0 (softplus makes dt >= 0; A <= 0): the kernel skips a clamp."""
    return int(softplus and bool((A <= 0).all()))


def _merge_table(walk, merge):
    return None if walk is None else torch.tensor(merge, dtype=torch.int64)


_FORWARD_SCHEMA = (  # the forward operator's schema
    "(Tensor u, Tensor delta, Tensor A, Tensor bc, Tensor? D, Tensor? delta_bias, Tensor? walk, "
    "int[] merge, int library, int height, int width, bool softplus, "
    "bool save_checkpoints) -> (Tensor, Tensor, Tensor)"
)


def _forward_fake(u, delta, A, bc, D, delta_bias, walk, merge, library, height, width, softplus, save_checkpoints):
    b, d, L = delta.shape
    n_pad, segment = A.shape[1], _LIBRARIES[library].segment
    checkpoints = (b, d, -(-L // segment), n_pad) if save_checkpoints else (0,)
    return torch.empty_like(u), u.new_empty((0,) if height else (b, d, n_pad)), u.new_empty(checkpoints)


def _backward_fake(u, delta, A, bc, D, delta_bias, walk, merge, checkpoints, dy, dlast, library, height, width,
                   softplus):  # fmt: skip
    optional = [u.new_empty((0,) if t is None else t.shape) for t in (D, delta_bias)]
    return [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(bc), *optional]


@custom_op(
    "cpu_scan_backward",
    "(Tensor u, Tensor delta, Tensor A, Tensor bc, Tensor? D, Tensor? delta_bias, Tensor? walk, "
    "int[] merge, Tensor checkpoints, Tensor dy, Tensor? dlast, int library, int height, int width, "
    "bool softplus) -> Tensor[]",
    fake=_backward_fake,
)
def _scan_backward(
    u, delta, A, bc, D, delta_bias, walk, merge, checkpoints, dy, dlast, library, height, width, softplus
):
    """Gradients of u, delta, A, bc, D and delta_bias (empty for an absent input) of `_scan_forward`."""
    lib = _LIBRARIES[library]
    b, d, n_pad = delta.shape[0], delta.shape[1], A.shape[1]
    threads = torch.get_num_threads()
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dA, dD, dbias = u.new_empty(b, d, n_pad), u.new_empty(b, d), u.new_empty(b, d)
    dbc = u.new_zeros(threads, *bc.shape)  # per-thread partials, summed below
    dy = dy.contiguous()
    dlast = None if dlast is None else dlast.contiguous()
    merge_table = _merge_table(walk, merge)
    inputs = _input_fields(walk, merge_table, u, delta, A, bc, D, delta_bias, softplus, _nonpositive(A, softplus),
                           n_pad)  # fmt: skip
    grads = {"du": du, "ddelta": ddelta, "dA_part": dA, "dD_part": dD, "dbias_part": dbias}
    grads.update(dB_part=dbc, dC_part=dbc[..., n_pad:])
    lib.call(
        "backward", **_shape(delta, A, bc, height, width), **inputs, threads=threads, checkpoints=checkpoints, dy=dy,
        dlast=dlast, **grads,
    )  # fmt: skip
    optional = [u.new_empty(0) if t is None else g.sum(0) for t, g in ((D, dD), (delta_bias, dbias))]
    return [du, ddelta, dA.sum(0), dbc.sum(0), *optional]


def _setup_context(ctx, inputs, output):
    u, delta, A, bc, D, delta_bias, walk, merge, library, height, width, softplus, _ = inputs
    ctx.save_for_backward(u, delta, A, bc, D, delta_bias, walk, output[2])
    ctx.settings = (merge, library, height, width, softplus)


def _backward(ctx, dy, dlast, _):
    u, delta, A, bc, D, delta_bias, walk, checkpoints = ctx.saved_tensors
    merge, library, height, width, softplus = ctx.settings
    if checkpoints.numel() == 0:
        raise RuntimeError("CPU scan: the forward ran without saving checkpoints (no input required gradients).")
    dlast = None if height else dlast
    du, ddelta, dA, dbc, dD, dbias = _scan_backward(
        u, delta, A, bc, D, delta_bias, walk, merge, checkpoints, dy, dlast, library, height, width, softplus
    )
    return du, ddelta, dA, dbc, dD if D is not None else None, dbias if delta_bias is not None else None, *[None] * 7


@custom_op("cpu_scan_forward", _FORWARD_SCHEMA, fake=_forward_fake, autograd=(_backward, _setup_context))
def _scan_forward(u, delta, A, bc, D, delta_bias, walk, merge, library, height, width, softplus, save_checkpoints):
    """y (plain: y = <h_t, C_t> + D u_t, (b, d, L); SS2D with ``height`` > 0: (b, d / 4, L) summed over the four
    directions walked by ``walk`` and added in ``merge`` order), the last state (plain only; else empty) and the
    checkpoints a backward needs (empty unless ``save_checkpoints``). B and C are the two halves of ``bc``'s rows."""
    lib = _LIBRARIES[library]
    y, last, checkpoints = _forward_fake(u, delta, A, bc, D, delta_bias, walk, merge, library, height, width, softplus,
                                         save_checkpoints)  # fmt: skip
    merge_table = _merge_table(walk, merge)  # held for the whole call: the kernel reads it through a pointer
    inputs = _input_fields(walk, merge_table, u, delta, A, bc, D, delta_bias, softplus, _nonpositive(A, softplus),
                           A.shape[1])  # fmt: skip
    lib.call(
        "forward",
        **_shape(delta, A, bc, height, width),
        **inputs,
        threads=torch.get_num_threads(),
        y=y,
        last=last if last.numel() else None,
        checkpoints=checkpoints if checkpoints.numel() else None,
    )
    return y, last, checkpoints


def _needs_checkpoints(*tensors):
    """Whether the forward must keep checkpoints for a backward."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _pack_bc(B, C, n_pad):
    """B and C (b, g, n, L) -> one (b, g, L, 2 * n_pad) tensor, each step's n values contiguous, zero-padded."""
    n = B.shape[2]
    return F.pad(torch.cat([B, C], dim=2).transpose(2, 3).unflatten(-1, (2, n)), (0, n_pad - n)).flatten(-2)


class CpuScan:
    """The fused CPU scan for float32 inputs with ``d_state <= max_state`` (the dispatch sends anything else to the
    chunked scan). Inputs as the dispatch prepares them: float32, B and C grouped (b, g, n, L)."""

    def __init__(self, library):
        self.library = library
        self.max_state = library.max_state
        _LIBRARIES.append(library)
        self.library_id = len(_LIBRARIES) - 1

    def _prepare(self, u, delta, A, B, C, D, delta_bias):
        n = A.shape[-1]
        n_pad = n + (-n % self.library.width)  # zero lanes: decay exp(0) = 1, no input, no read-out
        A = F.pad(A, (0, n_pad - n)).contiguous()
        bc = _pack_bc(B, C, n_pad).contiguous()
        D, delta_bias = (None if t is None else t.contiguous() for t in (D, delta_bias))
        return u.contiguous(), delta.contiguous(), A, bc, D, delta_bias

    def scan(self, u, delta, A, B, C, D, delta_bias, delta_softplus):
        """``(y, h_L)`` without the ``z`` gate: y = <h_t, C_t> + D u_t."""
        n = A.shape[-1]
        args = self._prepare(u, delta, A, B, C, D, delta_bias)
        save = _needs_checkpoints(*args)
        y, last, _ = _scan_forward(*args, None, [], self.library_id, 0, 0, bool(delta_softplus), save)
        return y, last[..., :n]

    def cross_scan(self, u, delta, A, B, C, D, delta_bias, height, width, walk, merge_order):
        """SS2D's four-direction scan on pixel-ordered inputs (contract of `selective_scan.cross_selective_scan`),
        walking direction k by ``walk[k]`` (the pixel of each step) and summing the four in ``merge_order``."""
        args = self._prepare(u, delta, A, B, C, D, delta_bias)
        walk = walk.to(torch.int64).contiguous()
        save = _needs_checkpoints(*args)
        y, _, _ = _scan_forward(*args, walk, list(merge_order), self.library_id, height, width, True, save)
        return y


@lru_cache(maxsize=1)
def load_cpu_scan():
    """The fused CPU scan (`CpuScan`), or None with one log line saying why."""
    try:
        return CpuScan(_Library(build()))
    except Exception as err:  # no compiler, a failed build, an unloadable library: the chunked scan takes over
        logger.warning_once(f"hf_medmamba: the fused CPU scan kernel is unavailable ({err}); using the chunked scan.")
        return None
