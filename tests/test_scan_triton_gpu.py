"""The Triton scan backend's compiled kernels on a real GPU, at real sizes (skipped without CUDA by tests/conftest.py).

Run on a GPU host: ``python -m pytest -m gpu tests/test_scan_triton_gpu.py`` (tests/test_scan_triton.py then runs its
default cases on the GPU too).
"""

import pytest
import torch

from hf_medmamba import scan_kernels
from hf_medmamba import scan_triton as st
from hf_medmamba import selective_scan as ss

from .test_scan_triton import triton  # noqa: F401  (skips this module too, with CI=true fails, without Triton)
from .triton_helpers import (
    assert_model_matches_chunked,
    deterministic_algorithms,
    direction_table,
    leaves,
    rel_err,
    scan_inputs,
    tiny_models,
)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["chunked", "mamba_ssm"])
def test_gpu_matches_other_backends(backend):
    """MedMamba-T stage-2 sizes (E = 192, 28 x 28, n = 16, batch 2): cross and plain scans, fp32, with gradients."""
    if backend == "mamba_ssm" and scan_kernels.mamba_ssm_kernel() is None:
        pytest.skip("mamba-ssm is not installed here: nothing to compare with")
    H = W = 28
    inputs = scan_inputs(2, 192, H * W, 16, cross=True)
    del inputs["z"]
    ours, theirs = leaves(inputs, device="cuda"), leaves(inputs, device="cuda")
    y = st.cross_selective_scan_triton(**ours, order=direction_table(H, W, "cuda"))
    expected = ss.cross_selective_scan(**theirs, height=H, width=W, backend=backend)
    assert rel_err(y, expected) <= 1e-4
    weight = torch.randn_like(y)
    (y * weight).sum().backward()
    (expected * weight).sum().backward()
    for name in inputs:
        assert rel_err(ours[name].grad, theirs[name].grad) <= 1e-3, name
    plain = scan_inputs(2, 256, 1000, 16, g=4)
    ours, theirs = leaves(plain, device="cuda"), leaves(plain, device="cuda")
    y = st.selective_scan_triton(**ours, delta_softplus=True)
    expected = ss.selective_scan(**theirs, delta_softplus=True, backend=backend)
    assert rel_err(y, expected) <= 1e-4
    y.square().sum().backward()
    expected.square().sum().backward()
    for name in plain:
        assert rel_err(ours[name].grad, theirs[name].grad) <= 1e-3, name


@pytest.mark.gpu
def test_gpu_deterministic_mode_is_bitwise_reproducible():
    inputs = scan_inputs(2, 64, 32 * 32, 16, cross=True)
    del inputs["z"]
    runs = []
    with deterministic_algorithms():
        for _ in range(2):
            ours = leaves(inputs, device="cuda")
            y = st.cross_selective_scan_triton(**ours, order=direction_table(32, 32, "cuda"))
            y.square().sum().backward()
            runs.append([y.detach(), *(t.grad for t in ours.values())])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_bf16_inputs():
    inputs = {k: v.bfloat16().double() for k, v in scan_inputs(4, 384, 2048, 16, g=4).items()}
    ours, ref = leaves(inputs, torch.bfloat16, "cuda"), leaves(inputs, device="cuda")
    y = st.selective_scan_triton(**ours, delta_softplus=True)
    expected = st.selective_scan_triton(**ref, delta_softplus=True)  # the same values in float32
    assert y.dtype == torch.bfloat16 and rel_err(y, expected) <= 1e-2
    y.float().square().sum().backward()
    expected.square().sum().backward()
    for name in inputs:
        assert rel_err(ours[name].grad, ref[name].grad) <= 2e-2, name


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["medmamba", "vmunet"])
def test_gpu_models_match_the_chunked_backend(monkeypatch, name):
    """Whole models at 224 / 256 px, batch 4: fp32 (no TF32 convolutions), then a bf16-autocast training step."""
    size = 224 if name == "medmamba" else 256
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, allow_tf32=False):
        assert_model_matches_chunked(monkeypatch, name, size=size, batch=4, out_tol=1e-4, grad_tol=1e-3)
    model = tiny_models()[name].cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(pixel_values=torch.randn(4, 3, 256, 256, device="cuda")).logits
    logits.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.gpu
def test_gpu_inductor_compiles_a_model_with_the_op():
    model = tiny_models()["vmunet"].cuda().eval().set_scan_backend("triton")
    images = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        eager = model(pixel_values=images).logits
        compiled = torch.compile(model, fullgraph=False)(pixel_values=images).logits
    assert rel_err(compiled, eager) <= 1e-4
