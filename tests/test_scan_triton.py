"""The Triton scan backend against the float64 reference.

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1`` before Triton
is imported); on a GPU host the same tests run the compiled kernels on CUDA. The interpreter takes milliseconds per
step and program, so the default cases are small; longer shapes, other dtypes and whole models are ``slow``, and the
GPU-sized checks are marked ``gpu``.
"""

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch


try:
    import triton  # noqa: F401
except ImportError as err:
    if os.environ.get("CI", "").lower() == "true":
        raise ImportError(
            "CI=true but Triton is not installed: the dev extra brings it (pip install -e '.[dev]')"
        ) from err
    pytest.skip(
        "Triton is not installed (pip install triton numpy); its interpreter runs these tests", allow_module_level=True
    )

from hf_medmamba import scan_triton as st
from hf_medmamba.selective_scan import cross_selective_scan
from hf_medmamba.tools.remote_code_scan import scan_remote_code

from .triton_helpers import (
    DEVICE,
    assert_matches_reference,
    assert_model_matches_chunked,
    deterministic_algorithms,
    direction_table,
    leaves,
    rel_err,
    scan_inputs,
    selective_scan_reference,
)


REPO = Path(__file__).resolve().parents[1]


ALL = {"D": True, "z": True, "delta_bias": True, "delta_softplus": True, "return_last_state": True}


# ----------------------------------------------------------------------------------------------------------------------
# Default cases: small enough for the interpreter
# ----------------------------------------------------------------------------------------------------------------------


def test_short_sequences(monkeypatch):
    """L = 1 with everything on; L = 5 in chunks of 2 (a partial last chunk), with each B/C group split over blocks of
    one channel so that dB and dC are summed over blocks: atomically, then through partial buffers (deterministic)."""
    assert_matches_reference(scan_inputs(2, 2, 1, 3), ALL)
    monkeypatch.setattr(st, "_MAX_BLOCK_D", 1)
    monkeypatch.setattr(st, "_MIN_GPU_BLOCK_D", 1)
    options = {"D": True, "delta_bias": True, "delta_softplus": True}
    assert_matches_reference(scan_inputs(2, 4, 5, 3, g=2), options, chunk_size=2)
    with deterministic_algorithms():
        assert_matches_reference(scan_inputs(2, 4, 5, 3, g=2, seed=1), options, chunk_size=2)


def test_chunk_boundaries():
    """One partial chunk, exactly one chunk, one chunk and a step (chunks of 64), with and without the options."""
    cases = [
        (63, 1, {}),
        (64, 1, {"z": True, "delta_bias": True, "return_last_state": True}),  # no softplus
        (65, 2, ALL),  # grouped B and C
    ]
    for L, groups, options in cases:
        assert_matches_reference(scan_inputs(1, 8, L, 4, g=groups), {**options, "L": L})


@pytest.mark.parametrize(
    ("height", "width", "chunk_size", "deterministic"),
    [(3, 5, 4, False), (4, 4, st.CHUNK_SIZE, True)],
    ids=["3x5-chunks-of-4-atomic", "4x4-deterministic"],
)
def test_cross_scan_matches_reference(height, width, chunk_size, deterministic):
    """SS2D's four directions read in place from the direction table and summed at their pixels."""
    inputs = scan_inputs(1, 4, height * width, 3, cross=True)
    del inputs["z"]
    ours, ref = leaves(inputs), leaves(inputs, torch.float64, "cpu")
    with deterministic_algorithms() if deterministic else contextlib.nullcontext():
        y = st.cross_selective_scan_triton(**ours, order=direction_table(height, width), chunk_size=chunk_size)
        expected = cross_selective_scan(**ref, height=height, width=width, backend="reference")
        assert y.dtype == torch.float32 and y.shape == (1, 4, height * width)
        assert rel_err(y, expected) <= 1e-5
        weight = torch.randn(expected.shape, dtype=torch.float64)
        (y * weight.to(y)).sum().backward()
        (expected * weight).sum().backward()
    for name in inputs:
        assert rel_err(ours[name].grad, ref[name].grad) <= 1e-4, name


def tiny_calls():
    """Inputs of a plain scan with every option and of a 2 x 3 cross scan, and the direction table of the latter."""
    plain = leaves(scan_inputs(1, 2, 3, 2))
    cross = leaves(scan_inputs(1, 2, 6, 2, cross=True))
    del cross["z"]
    return plain, cross, direction_table(2, 3)


def test_torch_compile_sees_no_graph_break():
    plain, cross, order = tiny_calls()

    def fn(plain, cross):
        y, last = st.selective_scan_triton(**plain, delta_softplus=True, return_last_state=True)
        return (y * 2).sum() + last.sum() + st.cross_selective_scan_triton(**cross, order=order).square().sum()

    explanation = torch._dynamo.explain(fn)(plain, cross)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    leaves_ = {**{f"plain {k}": v for k, v in plain.items()}, **{f"cross {k}": v for k, v in cross.items()}}
    fn(plain, cross).backward()
    eager = {name: t.grad for name, t in leaves_.items()}
    for t in leaves_.values():
        t.grad = None
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break would raise
    compiled(plain, cross).backward()
    for name, t in leaves_.items():
        torch.testing.assert_close(t.grad, eager[name], rtol=1e-6, atol=1e-6, msg=name)


def test_ops_pass_opcheck():
    """Schema, fake (meta) implementations and autograd registration, checked by torch.library.opcheck."""
    plain, cross, order = tiny_calls()
    p = plain
    B, C = p["B"].unsqueeze(1), p["C"].unsqueeze(1)
    args = (p["u"], p["delta"], p["A"], B, C, p["D"], p["delta_bias"], p["z"], None, True, True, True, 2)
    torch.library.opcheck(st.scan_forward_op, args)
    c = cross
    args = (c["u"], c["delta"], c["A"], c["B"], c["C"], c["D"], c["delta_bias"], None, order, True, False, True, 4)
    torch.library.opcheck(st.scan_forward_op, args)
    with torch.no_grad():
        _, _, checkpoints = st.scan_forward_op(*args)
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    dy = torch.randn(c["u"].shape, device=DEVICE)
    backward_args = (*detached[:9], checkpoints, dy, None, True, 4)
    torch.library.opcheck(st.scan_backward_op, backward_args)


# ----------------------------------------------------------------------------------------------------------------------
# Registration, errors, and life without Triton (no kernels run)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"order": torch.zeros(4, 6)}, "order must be an int32 or int64 tensor"),
        ({"order": torch.zeros(2, 6, dtype=torch.int64)}, "with 2 directions"),
        ({"order": torch.zeros(4, 5, dtype=torch.int64)}, "with 4 directions"),
        ({"u": torch.zeros(1, 3, 6)}, "with 4 directions"),
        ({"B": torch.zeros(1, 4, 3, 6)}, "B must have shape"),
        ({"chunk_size": 0}, "chunk_size must be an integer of at least 1"),
    ],
)
def test_cross_scan_bad_inputs_raise(change, message):
    inputs = {k: v.float() for k, v in scan_inputs(1, 2, 6, 2, cross=True).items() if k != "z"}
    kwargs = {**inputs, "order": direction_table(2, 3, "cpu"), **change}
    kwargs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        st.cross_selective_scan_triton(**kwargs)


def remote_code_copy(folder):
    """The backend's files as a saved folder holds them: flat siblings."""
    folder.mkdir()
    for name in ("scan_triton.py", "scan_triton_kernels.py", "scan_common.py", "scan_ops.py"):
        (folder / name).write_text((REPO / "hf_medmamba" / name).read_text())
    return folder


def test_remote_code_copy_passes_the_hub_scan(tmp_path):
    report = scan_remote_code(remote_code_copy(tmp_path / "copy"), strict_files=False)
    assert report.ok, report.format()


def test_without_triton_or_without_a_gpu(tmp_path):
    """Without Triton the module imports and says the backend is unavailable; with Triton but no GPU (and no
    interpreter) too. A second copy of the module (the installed package beside a model's remote code) reuses the ops.
    """
    (remote_code_copy(tmp_path / "remote_copy") / "__init__.py").write_text("")  # a package, as transformers makes
    code = textwrap.dedent(
        """
        import importlib
        import sys
        import torch
        sys.modules["triton"] = None  # as if Triton were not installed
        from hf_medmamba import scan_triton
        assert scan_triton.triton is None and not scan_triton.triton_available()
        u = torch.zeros(1, 2, 3)
        args = (u, u, torch.zeros(2, 1), torch.zeros(1, 1, 3), torch.zeros(1, 1, 3))
        try:
            scan_triton.selective_scan_triton(*args)
        except RuntimeError as err:
            assert "needs Triton, which does not import" in str(err), err
        else:
            raise AssertionError("no error without Triton")
        op = scan_triton.scan_forward_op
        del sys.modules["triton"]
        importlib.reload(scan_triton)  # again, with Triton
        assert scan_triton.triton is not None and scan_triton.scan_forward_op is op
        from remote_copy import scan_triton as copy
        assert copy is not scan_triton and copy.scan_forward_op is op
        assert copy.scan_backward_op is scan_triton.scan_backward_op
        if not torch.cuda.is_available():
            assert not scan_triton.triton_available()
            try:
                copy.selective_scan_triton(*args)
            except RuntimeError as err:
                assert "runs on CUDA or ROCm GPUs, but the tensors are on cpu" in str(err), err
            else:
                raise AssertionError("no error on CPU tensors")
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_bench_gpu_dry_run_prints_the_plan():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--dry-run", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = proc.stdout
    for expected in ("MedMamba-T", "VM-UNet", "batch 1", "batch 8", "ConvNeXt-T", "SegFormer-B2", "triton", "chunked"):
        assert expected in plan, expected
    assert "batch 32" not in plan  # --quick keeps to the smaller batches


# ----------------------------------------------------------------------------------------------------------------------
# Slow: longer shapes, other dtypes, whole models
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_long_sequences():
    assert_matches_reference(scan_inputs(1, 8, 200, 16, g=2), ALL, chunk_size=32)
    inputs = scan_inputs(1, 4, 99, 5, cross=True)
    del inputs["z"]
    ours, ref = leaves(inputs), leaves(inputs, torch.float64, "cpu")
    y = st.cross_selective_scan_triton(**ours, order=direction_table(9, 11))
    expected = cross_selective_scan(**ref, height=9, width=11, backend="reference")
    assert rel_err(y, expected) <= 1e-5
    y.square().sum().backward()
    expected.square().sum().backward()
    for name in inputs:
        assert rel_err(ours[name].grad, ref[name].grad) <= 1e-4, name


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(torch.float64, 1e-12), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)],
    ids=["float64", "float16", "bfloat16"],
)
def test_other_dtypes(dtype, tol):
    """float64 is computed in float64; half inputs in float32, with outputs and gradients rounded to their dtype."""
    inputs = {k: v.to(dtype).double() for k, v in scan_inputs(1, 4, 20, 3).items()}  # values representable in dtype
    ours, ref = leaves(inputs, dtype), leaves(inputs, torch.float64, "cpu")
    y = st.selective_scan_triton(**ours, delta_softplus=True)
    expected = selective_scan_reference(**ref, delta_softplus=True)
    assert y.dtype == dtype and rel_err(y, expected) <= tol
    y.float().square().sum().backward()
    expected.square().sum().backward()
    for name in inputs:
        assert ours[name].grad.dtype == dtype and rel_err(ours[name].grad, ref[name].grad) <= tol, name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["medmamba", "vmunet"])
def test_tiny_models_match_the_chunked_backend(monkeypatch, name):
    assert_model_matches_chunked(monkeypatch, name, size=32, batch=1, out_tol=1e-5, grad_tol=1e-4)
