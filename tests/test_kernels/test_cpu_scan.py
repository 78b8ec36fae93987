"""The fused CPU kernel: equal to the reference (values and gradients), its walk pinned to `scan_directions`, its
ABI checks, its fallbacks, and its build cache."""

import ctypes
import logging
import platform
from functools import partial

import pytest
import torch

from hf_medmamba import scan_kernels
from hf_medmamba import selective_scan as ss
from hf_medmamba.kernels import cpu_scan
from hf_medmamba.scan_backends import DISABLE_CPU_KERNEL_ENV

from ..conftest import OPTIONS, call, make_inputs, rel_err


REFERENCE = partial(ss.selective_scan, backend="reference")
CHUNKED = partial(ss.selective_scan, backend="chunked")


@pytest.fixture(scope="module")
def kernel_scan():
    """`selective_scan` on the default build of the kernel."""
    assert cpu_scan.load_cpu_scan() is not None, "the CPU kernel must build on the test machines (they have g++)"
    return partial(ss.selective_scan, backend="cpu_kernel")


def use_kernel(monkeypatch, kernel):
    """Make the dispatch use ``kernel`` (a `cpu_scan.CpuScan`) for "cpu_kernel"."""
    monkeypatch.setattr(scan_kernels, "cpu_kernel", lambda: kernel)
    monkeypatch.setattr(ss, "cpu_kernel", lambda: kernel)


SHAPES = [
    (1, 2, 1, 4, 1),
    (2, 8, 5, 16, 2),
    (2, 8, 130, 16, 4),  # three 64-step segments, the last one partial
    (1, 12, 97, 5, 3),  # state size padded to the vector width
    (2, 6, 64, 40, 3),  # several vectors per state
]


def assert_equals_float64_reference(kernel_scan, shape, opts, dt_scale):
    inp64 = make_inputs(*shape, dtype=torch.float64, dt_scale=dt_scale)
    exact, exact_last = call(REFERENCE, inp64, opts, return_last_state=True)
    y, last = call(kernel_scan, {k: v.float() for k, v in inp64.items()}, opts, return_last_state=True)
    assert y.dtype == torch.float32
    assert last.shape == exact_last.shape
    assert rel_err(y, exact) <= 1e-5
    assert rel_err(last, exact_last) <= 1e-5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("dt_scale", [1.0, 12.0])  # 12: softplus past its threshold of 20 and exp underflow
def test_kernel_equals_float64_reference(kernel_scan, shape, opts, dt_scale):
    assert_equals_float64_reference(kernel_scan, shape, opts, dt_scale)


def assert_gradients_equal_float64_reference(kernel_scan, shape, opts):
    inp = make_inputs(*shape, dt_scale=3.0)
    names = [
        k
        for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
        if k in ("u", "delta", "A", "B", "C") or opts.get(k, False)
    ]
    grads = []
    for fn, dtype in ((REFERENCE, torch.float64), (kernel_scan, torch.float32)):
        leaves = {k: v.to(dtype).requires_grad_(k in names) for k, v in inp.items()}
        y, last = call(fn, leaves, opts, return_last_state=True)
        gen = torch.Generator().manual_seed(1)  # the same weights for both (drawn in float64, then cast)
        loss = (y * torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype)).sum()
        loss = loss + (last * torch.randn(last.shape, generator=gen, dtype=torch.float64).to(dtype)).sum()
        grads.append(torch.autograd.grad(loss, [leaves[k] for k in names]))
    for name, g_ref, g_kernel in zip(names, *grads):
        assert rel_err(g_kernel, g_ref) <= 1e-5, name


@pytest.mark.parametrize("shape", [(2, 8, 130, 16, 4), (1, 12, 97, 5, 3)])
@pytest.mark.parametrize("opts", OPTIONS)
def test_kernel_gradients_equal_float64_reference(kernel_scan, shape, opts):
    assert_gradients_equal_float64_reference(kernel_scan, shape, opts)


# The kernel's vector width follows the instruction set it is compiled for; the default build uses the widest this
# machine has (-march=native). These builds exercise the narrower code paths (no AVX-512 exp, 8- and 4-lane sums).
NARROW_BUILDS = {
    "avx2": (["-O3", "-mavx2", "-mfma", "-fopenmp", "-fno-math-errno"], 8),
    "x86-64 baseline": (["-O3", "-fopenmp", "-fno-math-errno"], 4),
}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the narrow builds use x86 compiler flags")
@pytest.mark.parametrize("build", NARROW_BUILDS.values(), ids=NARROW_BUILDS.keys())
def test_narrower_vector_builds_equal_float64_reference(monkeypatch, tmp_path, build):
    flags, width = build
    monkeypatch.setenv("HF_MEDMAMBA_CACHE", str(tmp_path))
    library = cpu_scan._Library(cpu_scan.build(flag_sets=[flags]))
    assert library.width == width
    use_kernel(monkeypatch, cpu_scan.CpuScan(library))
    scan = partial(ss.selective_scan, backend="cpu_kernel")
    for shape in ((2, 8, 130, 16, 4), (1, 12, 97, 5, 3), (2, 6, 64, 40, 3)):
        for opts in (OPTIONS[0], OPTIONS[-1]):
            assert_equals_float64_reference(scan, shape, opts, dt_scale=3.0)
            assert_gradients_equal_float64_reference(scan, shape, opts)
    assert_cross_scan_equals_reordered_reference(partial(ss.cross_selective_scan, backend="cpu_kernel"), 5, 7)


def test_auto_uses_the_kernel_on_cpu(kernel_scan):
    assert ss.resolve_scan_backend("auto", "cpu") == "cpu_kernel"


def test_disable_variable_falls_back_to_chunked(monkeypatch):
    monkeypatch.setenv(DISABLE_CPU_KERNEL_ENV, "1")
    scan_kernels.cpu_kernel.cache_clear()
    try:
        assert ss.resolve_scan_backend("auto", "cpu") == "chunked"
        with pytest.raises(RuntimeError, match="not available"):
            ss.resolve_scan_backend("cpu_kernel", "cpu")
    finally:
        monkeypatch.delenv(DISABLE_CPU_KERNEL_ENV)
        scan_kernels.cpu_kernel.cache_clear()


def test_no_compiler_falls_back_with_one_log_line(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HF_MEDMAMBA_CACHE", str(tmp_path))  # nothing cached: a build would be needed
    monkeypatch.setattr(cpu_scan, "_compiler", lambda: None)
    cpu_scan.load_cpu_scan.cache_clear()
    scan_kernels.cpu_kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert ss.resolve_scan_backend("auto", "cpu") == "chunked"
            inp = make_inputs(1, 8, 20, 4, 2)
            y = call(ss.selective_scan, inp, OPTIONS[0])
        torch.testing.assert_close(y, call(REFERENCE, inp, OPTIONS[0]))
        messages = [r.getMessage() for r in caplog.records if "CPU scan kernel is unavailable" in r.getMessage()]
        assert len(messages) == 1
        assert "no C++ compiler" in messages[0]
    finally:
        cpu_scan.load_cpu_scan.cache_clear()
        scan_kernels.cpu_kernel.cache_clear()


def test_failed_compilation_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_MEDMAMBA_CACHE", str(tmp_path))
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++")
    monkeypatch.setattr(cpu_scan, "SOURCE", bad)
    with pytest.raises(RuntimeError, match="compiler failed"):
        cpu_scan.build()


def test_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_MEDMAMBA_CACHE", str(tmp_path))
    first = cpu_scan.build()
    assert first.is_relative_to(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cpu_scan.build() == first
    assert first.stat().st_mtime_ns == stamp


def test_float64_and_large_states_go_to_the_chunked_scan(kernel_scan):
    """The kernel is float32 with at most 4 vectors of state: anything else gets the chunked scan's exact result."""
    for inp in (make_inputs(1, 4, 9, 4, 1, dtype=torch.float64), make_inputs(1, 4, 9, 300, 1)):
        y = call(kernel_scan, inp, OPTIONS[0])
        assert y.dtype == inp["u"].dtype
        assert torch.equal(y, call(CHUNKED, inp, OPTIONS[0]))


@pytest.mark.parametrize("cross", [False, True])
def test_backward_is_repeatable_with_expanded_gradients(kernel_scan, cross):
    """y.sum() hands the backward an expanded (stride-0) gradient; the kernel must read a live contiguous copy."""
    gen = torch.Generator().manual_seed(0)
    b, E, H, W, n = 2, 16, 4, 5, 16
    L = H * W
    u = torch.randn(b, E if cross else 4 * E, L, generator=gen)
    delta, A = torch.randn(b, 4 * E, L, generator=gen), -torch.rand(4 * E, n, generator=gen)
    B, C = torch.randn(b, 4, n, L, generator=gen), torch.randn(b, 4, n, L, generator=gen)
    grads = []
    for _ in range(4):
        leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
        if cross:
            y = ss.cross_selective_scan(*leaves, None, None, H, W, backend="cpu_kernel")
        else:
            y = ss.selective_scan(*leaves, delta_softplus=True, backend="cpu_kernel")
        grads.append(torch.autograd.grad(y.sum(), leaves))
    for later in grads[1:]:
        for first, again in zip(grads[0], later):
            assert torch.equal(first, again)


def assert_cross_scan_equals_reordered_reference(cross_scan, height, width):
    """``cross_scan(u, delta, A, B, C, D, delta_bias, height, width)`` equals the reference on reordered copies."""
    gen = torch.Generator().manual_seed(1)
    b, E, n = 2, 8, 16
    L = height * width
    inputs = [
        torch.randn(b, E, L, generator=gen),
        torch.randn(b, 4 * E, L, generator=gen),
        -torch.exp(torch.randn(4 * E, n, generator=gen)),
        torch.randn(b, 4, n, L, generator=gen),
        torch.randn(b, 4, n, L, generator=gen),
        torch.randn(4 * E, generator=gen),
        torch.randn(4 * E, generator=gen),
    ]
    results = []
    for fn in (partial(ss.cross_selective_scan, backend="reference"), cross_scan):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y = fn(*leaves, height, width)
        weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
        results.append((y, torch.autograd.grad((y * weight).sum(), leaves)))
    (y_ref, g_ref), (y_k, g_k) = results
    assert rel_err(y_k, y_ref) <= 1e-5
    for name, a, b_ in zip(["u", "delta", "A", "B", "C", "D", "delta_bias"], g_k, g_ref):
        assert rel_err(a, b_) <= 1e-5, name


@pytest.mark.parametrize(("height", "width"), [(1, 1), (5, 7), (16, 3), (9, 9)])
def test_cross_scan_kernel_equals_reordered_reference(kernel_scan, height, width):
    """The kernel's in-place four-direction walk equals scanning explicitly reordered copies (values and grads)."""
    assert_cross_scan_equals_reordered_reference(partial(ss.cross_selective_scan, backend="cpu_kernel"), height, width)


def test_kernel_walks_the_tables_it_is_given(kernel_scan):
    """The kernel follows the walk table and merge order passed in (here arbitrary permutations), not an order of
    its own: it equals scanning copies reordered by the same tables with the reference, summed in the same order."""
    gen = torch.Generator().manual_seed(3)
    b, E, n, height, width = 2, 4, 16, 3, 5
    L = height * width
    u, delta = torch.randn(b, E, L, generator=gen), torch.randn(b, 4 * E, L, generator=gen)
    A, bias = -torch.exp(torch.randn(4 * E, n, generator=gen)), torch.randn(4 * E, generator=gen)
    B, C, D = torch.randn(b, 4, n, L, generator=gen), torch.randn(b, 4, n, L, generator=gen), torch.randn(4 * E)
    walk = torch.stack([torch.randperm(L, generator=gen) for _ in range(4)])
    merge = (3, 1, 0, 2)
    got = cpu_scan.load_cpu_scan().cross_scan(u, delta, A, B, C, D, bias, height, width, walk, merge)
    expected = 0
    for k in merge:
        rows = slice(k * E, (k + 1) * E)
        y_k = ss.selective_scan(
            u[..., walk[k]],
            delta[:, rows][..., walk[k]],
            A[rows],
            B[:, k][..., walk[k]],
            C[:, k][..., walk[k]],
            D=D[rows],
            delta_bias=bias[rows],
            delta_softplus=True,
            backend="reference",
        )
        expected = expected + torch.empty_like(y_k).index_copy_(-1, walk[k], y_k)  # back to the pixels
    assert rel_err(got, expected) <= 1e-5


def test_library_of_another_abi_version_is_refused(monkeypatch, tmp_path):
    built = cpu_scan.build()
    source = tmp_path / "selective_scan_cpu.cpp"
    source.write_text(cpu_scan.SOURCE.read_text().replace("SCAN_ABI_VERSION 5", "SCAN_ABI_VERSION 99"))
    monkeypatch.setattr(cpu_scan, "SOURCE", source)
    with pytest.raises(RuntimeError, match=r"ABI version 5 .* expects version 99"):
        cpu_scan._Library(built)


def test_a_call_with_another_struct_layout_is_refused():
    """The kernel checks the caller's ScanArgs size before reading it (status 2), and the loader raises on it."""
    library = cpu_scan.load_cpu_scan().library
    args = cpu_scan.ScanArgs(struct_size=ctypes.sizeof(cpu_scan.ScanArgs) - 8)
    assert library._entry["forward"](ctypes.byref(args)) == 2
    assert library._entry["backward"](ctypes.byref(args)) == 2
    with pytest.raises(RuntimeError, match=r"refused the call \(status 1\)"):  # shapes it cannot run: b = 0
        library.call("forward", b=0, d=4, L=3, n_pad=16, g=1, bc_stride=32, height=0, width=0)


def test_an_invalid_merge_order_is_refused(kernel_scan):
    gen = torch.Generator().manual_seed(0)
    b, E, n, L = 1, 2, 16, 6
    args = [torch.randn(b, E, L, generator=gen), torch.randn(b, 4 * E, L, generator=gen), -torch.rand(4 * E, n)]
    args += [torch.randn(b, 4, n, L), torch.randn(b, 4, n, L), None, None]
    walk = torch.arange(L).expand(4, L)
    with pytest.raises(RuntimeError, match="refused the call"):
        cpu_scan.load_cpu_scan().cross_scan(*args, 2, 3, walk, (0, 0, 1, 2))
