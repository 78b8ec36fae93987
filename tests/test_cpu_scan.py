"""The fused CPU kernel: equal to the reference (values and gradients), its fallbacks, and its build cache."""

import logging
import platform
from functools import partial

import pytest
import torch

from hf_medmamba import cpu_scan
from hf_medmamba import selective_scan as ss

from .conftest import OPTIONS, call, make_inputs, rel_err


@pytest.fixture(scope="module")
def kernel_scan():
    scan = cpu_scan.load_cpu_scan()
    assert scan is not None, "the CPU kernel must build on the test machines (they have g++)"
    return scan


SHAPES = [
    (1, 2, 1, 4, 1),
    (2, 8, 5, 16, 2),
    (2, 8, 130, 16, 4),  # three 64-step segments, the last one partial
    (1, 12, 97, 5, 3),  # state size padded to the vector width
    (2, 6, 64, 40, 3),  # several vectors per state
]


def assert_equals_float64_reference(kernel_scan, shape, opts, dt_scale):
    inp64 = make_inputs(*shape, dtype=torch.float64, dt_scale=dt_scale)
    exact, exact_last = call(ss.selective_scan_reference, inp64, opts, return_last_state=True)
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
    for fn, dtype in ((ss.selective_scan_reference, torch.float64), (kernel_scan, torch.float32)):
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
    kernel = cpu_scan._Kernel(cpu_scan.build(flag_sets=[flags]))
    assert kernel.width == width
    scan = cpu_scan.make_scan(kernel)
    for shape in ((2, 8, 130, 16, 4), (1, 12, 97, 5, 3), (2, 6, 64, 40, 3)):
        for opts in (OPTIONS[0], OPTIONS[-1]):
            assert_equals_float64_reference(scan, shape, opts, dt_scale=3.0)
            assert_gradients_equal_float64_reference(scan, shape, opts)
    assert_cross_scan_equals_reordered_reference(scan.cross_scan, 5, 7)


def test_auto_uses_the_kernel_on_cpu(kernel_scan):
    assert ss.resolve_scan_backend("auto", "cpu") == "cpu_kernel"


def test_disable_variable_falls_back_to_chunked(monkeypatch):
    monkeypatch.setenv(ss.DISABLE_CPU_KERNEL_ENV, "1")
    ss._cpu_kernel.cache_clear()
    try:
        assert ss.resolve_scan_backend("auto", "cpu") == "chunked"
        with pytest.raises(RuntimeError, match="not available"):
            ss.resolve_scan_backend("cpu_kernel", "cpu")
    finally:
        monkeypatch.delenv(ss.DISABLE_CPU_KERNEL_ENV)
        ss._cpu_kernel.cache_clear()


def test_no_compiler_falls_back_with_one_log_line(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HF_MEDMAMBA_CACHE", str(tmp_path))  # nothing cached: a build would be needed
    monkeypatch.setattr(cpu_scan, "_compiler", lambda: None)
    cpu_scan.load_cpu_scan.cache_clear()
    ss._cpu_kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert ss.resolve_scan_backend("auto", "cpu") == "chunked"
            inp = make_inputs(1, 8, 20, 4, 2)
            y = call(ss.selective_scan, inp, OPTIONS[0])
        torch.testing.assert_close(y, call(ss.selective_scan_reference, inp, OPTIONS[0]))
        messages = [r.getMessage() for r in caplog.records if "CPU scan kernel is unavailable" in r.getMessage()]
        assert len(messages) == 1
        assert "no C++ compiler" in messages[0]
    finally:
        cpu_scan.load_cpu_scan.cache_clear()
        ss._cpu_kernel.cache_clear()


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
        assert torch.equal(y, call(ss.selective_scan_chunked, inp, OPTIONS[0]))


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
