"""Numerical robustness of the scan and determinism of the models."""

import pytest
import torch

from hf_medmamba import MedMambaConfig, MedMambaForImageClassification, VMUNetConfig, VMUNetForSegmentation
from hf_medmamba import selective_scan as ss


BACKENDS = ["reference", "chunked", "cpu_kernel"]


def scan_inputs(b=1, d=8, L=64, n=16, g=4, bias=0.0, a_scale=1.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(b, d, L, generator=gen).to(dtype),
        "delta": torch.randn(b, d, L, generator=gen).to(dtype),
        "A": -torch.rand(d, n, generator=gen).add(0.5).mul(a_scale).to(dtype),
        "B": torch.randn(b, g, n, L, generator=gen).to(dtype),
        "C": torch.randn(b, g, n, L, generator=gen).to(dtype),
        "D": torch.randn(d, generator=gen).to(dtype),
        "delta_bias": torch.full((d,), bias).to(dtype),
    }


def finite_output_and_grads(inputs, backend, **kwargs):
    leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    y = ss.selective_scan(**leaves, delta_softplus=True, backend=backend, **kwargs)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all()
    for name, leaf in leaves.items():
        assert torch.isfinite(leaf.grad).all(), name
    return y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("bias", "a_scale"),
    [(20.0, 1.0), (-20.0, 1.0), (0.0, 1e4), (0.0, 1e-6), (20.0, 1e4), (-20.0, 1e-6)],
)
def test_extreme_step_sizes_stay_finite(backend, bias, a_scale):
    inputs = scan_inputs(bias=bias, a_scale=a_scale)
    y = finite_output_and_grads(inputs, backend)
    expected = ss.selective_scan(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True, backend="reference")
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["chunked", "cpu_kernel"])
def test_long_sequence_of_a_1024_pixel_image(backend):
    """L = 65,536 (a 1024 x 1024 image at stage 1), compared between the two fast backends."""
    inputs = scan_inputs(d=4, L=65_536)
    y = finite_output_and_grads(inputs, backend)
    other = ss.selective_scan(
        **inputs, delta_softplus=True, backend="chunked" if backend == "cpu_kernel" else "cpu_kernel"
    )
    torch.testing.assert_close(y, other, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_under_autocast(backend, dtype):
    inputs = scan_inputs(dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = finite_output_and_grads(inputs, backend)
    assert y.dtype == dtype


def tiny_models():
    medmamba = MedMambaForImageClassification(
        MedMambaConfig(depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], num_labels=3, drop_path_rate=0.0)
    )
    vmunet = VMUNetForSegmentation(
        VMUNetConfig(
            depths=[1, 1, 1, 1],
            depths_decoder=[1, 1, 1, 1],
            dims=[16, 32, 64, 128],
            num_labels=2,
            sigmoid_head=True,
            drop_path_rate=0.0,
        )
    )
    return {"medmamba": medmamba, "vmunet": vmunet}


@pytest.mark.parametrize("name", ["medmamba", "vmunet"])
@pytest.mark.parametrize("fill", [0.0, 1.0, -3.5])
def test_constant_images_give_finite_outputs_and_gradients(name, fill):
    model = tiny_models()[name].train()
    pixel_values = torch.full((2, 3, 64, 64), fill)
    labels = torch.tensor([0, 1]) if name == "medmamba" else torch.zeros(2, 64, 64, dtype=torch.long)
    out = model(pixel_values, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.logits).all()
    for pname, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["medmamba", "vmunet"])
def test_evaluation_is_deterministic_and_thread_count_independent(name):
    model = tiny_models()[name].eval()
    x = torch.randn(2, 3, 64, 64)
    threads = torch.get_num_threads()
    with torch.no_grad():
        first, second = model(x).logits, model(x).logits
        try:
            torch.set_num_threads(1)
            single_thread = model(x).logits
        finally:
            torch.set_num_threads(threads)
    assert torch.equal(first, second)
    torch.testing.assert_close(single_thread, first, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["medmamba", "vmunet"])
def test_cpu_equals_cuda(name):
    """The whole model on CUDA (scan backend "auto": mamba-ssm's kernel when it imports, else the chunked scan)
    against CPU (the compiled kernel or the chunked scan)."""
    model = tiny_models()[name].eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        on_cpu = model(x).logits
        on_cuda = model.cuda()(x.cuda()).logits.cpu()
    torch.testing.assert_close(on_cuda, on_cpu, rtol=0, atol=1e-4)
