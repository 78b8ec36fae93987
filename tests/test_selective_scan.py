import functools
import sys
import types

import pytest
import torch

from hf_medmamba import scan_chunked, scan_kernels
from hf_medmamba import selective_scan as ss
from hf_medmamba.scan_backends import SCAN_BACKEND_ENV

from .conftest import OPTIONS, call, make_inputs, rel_err


def backend_scan(backend):
    """`selective_scan` forced onto ``backend``."""
    return functools.partial(ss.selective_scan, backend=backend)


REFERENCE, CHUNKED = backend_scan("reference"), backend_scan("chunked")

SHAPES = [
    # (b, d, L, n, g): L = 1, L < T of a single chunk, L not a multiple of the chunk length, several groups
    (1, 2, 1, 4, 1),
    (2, 8, 5, 4, 2),
    (2, 8, 50, 4, 4),
    (1, 12, 97, 16, 4),
    (3, 6, 64, 5, 3),
]


@pytest.mark.parametrize("backend", ["chunked", "export"])  # the two pure-PyTorch fast formulations
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("dt_scale", [1.0, 12.0])  # 12: softplus saturates, dt reaches ~40 and exp(dt A) underflows
def test_fast_scans_equal_reference_equal_float64(backend, shape, opts, dt_scale):
    scan = backend_scan(backend)
    inp64 = make_inputs(*shape, dtype=torch.float64, dt_scale=dt_scale)
    inp32 = {k: v.float() for k, v in inp64.items()}
    exact, exact_last = call(REFERENCE, inp64, opts, return_last_state=True)
    ref, _ = call(REFERENCE, inp32, opts, return_last_state=True)
    y, last = call(scan, inp32, opts, return_last_state=True)
    assert y.dtype == torch.float32 and y.shape == inp32["u"].shape
    assert last.shape == (shape[0], shape[1], shape[3])
    assert rel_err(ref, exact) <= 1e-5
    assert rel_err(y, exact) <= 1e-5
    assert rel_err(y, ref) <= 1e-5
    assert rel_err(last, exact_last) <= 1e-5
    y64, last64 = call(scan, inp64, opts, return_last_state=True)  # float64 in, float64 math
    assert rel_err(y64, exact) <= 1e-12 and rel_err(last64, exact_last) <= 1e-12


@pytest.mark.parametrize("block_elements", [1, 300, 10**9])
def test_chunked_block_sizes(monkeypatch, block_elements):
    """One step per block, a partial last block, and whole chunks in one block all give the same result."""
    monkeypatch.setattr(scan_chunked, "_BLOCK_ELEMENTS", block_elements)
    inp = make_inputs(2, 8, 83, 4, 2, dtype=torch.float64)
    opts = OPTIONS[2]
    ref, ref_last = call(REFERENCE, inp, opts, return_last_state=True)
    chk, chk_last = call(CHUNKED, inp, opts, return_last_state=True)
    assert rel_err(chk, ref) <= 1e-12
    assert rel_err(chk_last, ref_last) <= 1e-12


def test_ungrouped_B_C_match_grouped_with_one_group():
    inp = make_inputs(2, 6, 20, 3, 1)
    ungrouped = dict(inp, B=inp["B"][:, 0], C=inp["C"][:, 0])
    for fn in (REFERENCE, CHUNKED):
        assert torch.equal(call(fn, inp, OPTIONS[0]), call(fn, ungrouped, OPTIONS[0]))


def test_last_state_ends_the_recurrence():
    """Running the second half from the first half's last state is not possible through the API (h0 = 0), so check
    the last state against the definition: y_L - D u_L = <h_L, C_L>."""
    inp = make_inputs(1, 4, 37, 3, 1, dtype=torch.float64)
    y, last = CHUNKED(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"], return_last_state=True)
    readout = (last * inp["C"][:, 0, :, -1].unsqueeze(1)).sum(-1)
    torch.testing.assert_close(readout, y[..., -1] - inp["D"] * inp["u"][..., -1])


@pytest.mark.parametrize("shape", [(1, 4, 1, 2, 1), (2, 4, 11, 3, 2), (1, 6, 30, 2, 3)])
def test_gradcheck_float64(shape):
    inp = make_inputs(*shape, dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    tensors = [inp[k].clone().requires_grad_() for k in names]

    def fn(*t):
        kw = dict(zip(names, t))
        y, last = CHUNKED(
            kw["u"],
            kw["delta"],
            kw["A"],
            kw["B"],
            kw["C"],
            D=kw["D"],
            z=kw["z"],
            delta_bias=kw["delta_bias"],
            delta_softplus=True,
            return_last_state=True,
        )
        return y, last

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 50, 4, 4), (1, 12, 97, 16, 4)])
@pytest.mark.parametrize("dt_scale", [1.0, 8.0])
def test_chunked_backward_matches_reference_autograd_fp32(shape, dt_scale):
    inp = make_inputs(*shape, dt_scale=dt_scale)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    grads = []
    for fn in (REFERENCE, CHUNKED):
        leaves = {k: inp[k].clone().requires_grad_() for k in names}
        y, last = fn(
            leaves["u"],
            leaves["delta"],
            leaves["A"],
            leaves["B"],
            leaves["C"],
            D=leaves["D"],
            z=leaves["z"],
            delta_bias=leaves["delta_bias"],
            delta_softplus=True,
            return_last_state=True,
        )
        gen = torch.Generator().manual_seed(1)
        loss = (y * torch.randn(y.shape, generator=gen)).sum() + (last * torch.randn(last.shape, generator=gen)).sum()
        grads.append(torch.autograd.grad(loss, [leaves[k] for k in names]))
    for name, g_ref, g_chk in zip(names, *grads):
        assert rel_err(g_chk, g_ref) <= 1e-4, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_computed_in_float32(dtype):
    inp = {k: v.to(dtype) for k, v in make_inputs(2, 8, 40, 4, 2).items()}
    y = call(CHUNKED, inp, OPTIONS[0])
    assert y.dtype == dtype
    expected = call(REFERENCE, {k: v.float() for k, v in inp.items()}, OPTIONS[0]).to(dtype)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_float64_is_kept():
    inp = make_inputs(1, 4, 9, 2, 1, dtype=torch.float64)
    assert call(CHUNKED, inp, OPTIONS[0]).dtype == torch.float64


def test_dispatch_runs_under_autocast_in_float32():
    inp = make_inputs(1, 8, 16, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = call(ss.selective_scan, inp, OPTIONS[0], backend="chunked")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, call(REFERENCE, inp, OPTIONS[0]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"u": torch.zeros(2, 8)}, "u must have shape"),
        ({"delta": torch.zeros(2, 8, 3)}, "delta has shape"),
        ({"A": torch.zeros(7, 4)}, "A must have shape"),
        ({"B": torch.zeros(2, 3, 4, 10)}, "does not divide"),
        ({"C": torch.zeros(2, 2, 5, 10)}, "C must have shape"),
        ({"D": torch.zeros(3)}, "D must have shape"),
        ({"u": torch.zeros(2, 8, 0), "delta": torch.zeros(2, 8, 0)}, "empty"),
    ],
)
def test_bad_shapes_raise_clear_errors(change, message):
    inp = dict(make_inputs(2, 8, 10, 4, 2), **change)
    with pytest.raises(ValueError, match=message):
        call(CHUNKED, inp, OPTIONS[0])


# ---------------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_mamba_ssm(monkeypatch):
    """A fake, importable mamba_ssm whose kernel records its calls."""
    calls = []

    def selective_scan_fn(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the fake mamba_ssm kernel must not run in this test")

    modules = {
        "mamba_ssm": types.ModuleType("mamba_ssm"),
        "mamba_ssm.ops": types.ModuleType("mamba_ssm.ops"),
        "mamba_ssm.ops.selective_scan_interface": types.ModuleType("mamba_ssm.ops.selective_scan_interface"),
    }
    modules["mamba_ssm.ops.selective_scan_interface"].selective_scan_fn = selective_scan_fn
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    scan_kernels.mamba_ssm_kernel.cache_clear()
    yield calls
    scan_kernels.mamba_ssm_kernel.cache_clear()


@pytest.fixture
def no_mamba_ssm(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes `import mamba_ssm` raise ImportError
    scan_kernels.mamba_ssm_kernel.cache_clear()
    yield
    scan_kernels.mamba_ssm_kernel.cache_clear()


def test_auto_never_calls_mamba_ssm_for_cpu_tensors(fake_mamba_ssm):
    inp = make_inputs(1, 8, 16, 4, 2)
    y = call(ss.selective_scan, inp, OPTIONS[0])  # backend="auto"
    assert fake_mamba_ssm == []
    torch.testing.assert_close(y, call(REFERENCE, inp, OPTIONS[0]))
    assert ss.resolve_scan_backend("auto", "cpu") in ("chunked", "cpu_kernel")


def test_auto_picks_mamba_ssm_for_cuda_tensors_when_it_imports(fake_mamba_ssm):
    assert ss.resolve_scan_backend("auto", "cuda") == "mamba_ssm"
    assert ss.resolve_scan_backend("auto", torch.device("cuda", 1)) == "mamba_ssm"
    assert ss.resolve_scan_backend("chunked", "cuda") == "chunked"


def test_auto_on_cuda_without_mamba_ssm_or_triton_uses_chunked(no_mamba_ssm, monkeypatch):
    monkeypatch.setattr(ss, "triton_available", lambda: False)
    assert ss.resolve_scan_backend("auto", "cuda") == "chunked"


def test_forcing_mamba_ssm_on_cpu_raises(fake_mamba_ssm):
    with pytest.raises(RuntimeError, match="runs only on CUDA"):
        call(ss.selective_scan, make_inputs(1, 8, 16, 4, 2), OPTIONS[0], backend="mamba_ssm")
    assert fake_mamba_ssm == []


def test_forcing_mamba_ssm_without_the_package_raises(no_mamba_ssm):
    with pytest.raises(RuntimeError, match="cannot be imported"):
        ss.resolve_scan_backend("mamba_ssm", "cuda")


def test_environment_variable_sets_the_auto_backend(monkeypatch):
    monkeypatch.setenv(SCAN_BACKEND_ENV, "reference")
    assert ss.resolve_scan_backend("auto", "cpu") == "reference"
    assert ss.resolve_scan_backend("chunked", "cpu") == "chunked"  # an explicit choice wins
    monkeypatch.setenv(SCAN_BACKEND_ENV, "mamba_ssm")
    with pytest.raises(RuntimeError, match=SCAN_BACKEND_ENV):
        ss.resolve_scan_backend("auto", "cpu")
    monkeypatch.setenv(SCAN_BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="Unknown scan backend 'fastest'"):
        ss.resolve_scan_backend("auto", "cpu")


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="choose one of"):
        ss.resolve_scan_backend("cuda_kernel", "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["chunked", "mamba_ssm"])
def test_cuda_backends_match_reference(backend):
    if backend == "mamba_ssm" and scan_kernels.mamba_ssm_kernel() is None:
        pytest.skip("mamba_ssm is not installed on this GPU host")
    inp = {k: v.cuda() for k, v in make_inputs(2, 64, 300, 16, 4).items()}
    y = call(ss.selective_scan, inp, OPTIONS[0], backend=backend)
    expected = call(REFERENCE, {k: v.cpu().double() for k, v in inp.items()}, OPTIONS[0])
    assert rel_err(y.cpu(), expected) <= 1e-4


def test_auto_on_cuda_prefers_mamba_ssm_then_triton_then_chunked(monkeypatch, fake_mamba_ssm):
    """mamba-ssm when it imports, else Triton when it imports with a GPU driver, else chunked; never Triton on CPU."""
    monkeypatch.setattr(ss, "triton_available", lambda: True)
    assert ss.resolve_scan_backend("auto", "cuda") == "mamba_ssm"
    monkeypatch.setattr(ss, "mamba_ssm_kernel", lambda: None)
    assert ss.resolve_scan_backend("auto", "cuda") == "triton"
    assert ss.resolve_scan_backend("auto", "cpu") in ("cpu_kernel", "chunked")  # Triton only for GPU tensors
    monkeypatch.setattr(ss, "triton_available", lambda: False)
    assert ss.resolve_scan_backend("auto", "cuda") == "chunked"
    with pytest.raises(RuntimeError, match="Triton does not import or finds no GPU driver"):
        ss.resolve_scan_backend("triton", "cuda")
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", True)  # as inside torch.export
    with pytest.raises(RuntimeError, match="cannot be exported"):
        ss.resolve_scan_backend("triton", "cuda")
