"""Helpers of the Triton scan tests (`test_scan_triton.py`, `test_scan_triton_gpu.py`): inputs, the float64
comparison, the direction table and tiny models. Import it after Triton (the test modules skip without it)."""

import contextlib
import copy

import torch

from hf_medmamba import scan_triton as st
from hf_medmamba import selective_scan as ss_module
from hf_medmamba.scan_directions import scan_orders
from hf_medmamba.selective_scan import selective_scan


DEVICE = "cpu" if st._interpreting() else "cuda"


def direction_table(height, width, device=DEVICE):
    """The shared direction table (`scan_directions.scan_orders`) on the test device."""
    return scan_orders(height, width, device)


def selective_scan_reference(*args, **kwargs):
    return selective_scan(*args, **kwargs, backend="reference")


def rel_err(actual, expected):
    expected = expected.double()
    return ((actual.double().cpu() - expected.cpu()).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def scan_inputs(b, d, L, n, g=None, cross=False, seed=0):
    """float64 inputs on the CPU; ``g=None`` gives ungrouped (b, n, L) B and C. ``cross``: SS2D's (u shared)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    rows = 4 * d if cross else d
    bc_shape = (b, 4, n, L) if cross else (b, n, L) if g is None else (b, g, n, L)
    return {
        "u": rand(b, d, L),
        "delta": 0.5 * rand(b, rows, L),
        "A": -torch.exp(0.5 * rand(rows, n)),
        "B": rand(*bc_shape),
        "C": rand(*bc_shape),
        "D": rand(rows),
        "z": rand(b, d, L),
        "delta_bias": 0.5 * rand(rows),
    }


def leaves(inputs, dtype=torch.float32, device=DEVICE):
    return {k: v.to(device=device, dtype=dtype).requires_grad_(True) for k, v in inputs.items()}


def assert_matches_reference(inputs, options, chunk_size=st.CHUNK_SIZE, out_tol=1e-5, grad_tol=1e-4):
    """Outputs (and the last state) within ``out_tol``, every gradient within ``grad_tol``, relative to the max."""
    keep = {k: v for k, v in inputs.items() if k in ("u", "delta", "A", "B", "C") or options.get(k, False)}
    if not options.get("delta_softplus"):  # step sizes are used as given: keep them positive
        keep.update({k: v.abs() for k, v in keep.items() if k in ("delta", "delta_bias")})
    flags = {k: v for k, v in options.items() if k in ("delta_softplus", "return_last_state")}
    ours, ref = leaves(keep), leaves(keep, torch.float64, "cpu")
    out = st.selective_scan_triton(**ours, **flags, chunk_size=chunk_size)
    expected = selective_scan_reference(**ref, **flags)
    outs, expecteds = (out, expected) if flags.get("return_last_state") else ((out,), (expected,))
    assert outs[0].dtype == torch.float32 and outs[0].device.type == DEVICE
    weights = [torch.randn(e.shape, dtype=torch.float64) for e in expecteds]
    for o, e, name in zip(outs, expecteds, ("y", "last state")):
        assert rel_err(o, e) <= out_tol, f"{name}: {rel_err(o, e):.2e} ({options})"
    sum((o * w.to(o)).sum() for o, w in zip(outs, weights)).backward()
    sum((e * w).sum() for e, w in zip(expecteds, weights)).backward()
    for name in keep:
        err = rel_err(ours[name].grad, ref[name].grad)
        assert err <= grad_tol, f"d{name}: {err:.2e} ({options})"


@contextlib.contextmanager
def deterministic_algorithms():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def count_triton_scans(monkeypatch):
    """Record the grid of every four-direction scan the Triton backend runs; returns the list."""
    grids = []
    original = st.cross_selective_scan_triton

    def recorded(u, delta, A, B, C, D, delta_bias, order, *args, **kwargs):
        grids.append(tuple(order.shape))
        return original(u, delta, A, B, C, D, delta_bias, order, *args, **kwargs)

    monkeypatch.setattr(ss_module, "cross_selective_scan_triton", recorded)
    return grids


def tiny_models():
    from hf_medmamba import MedMambaConfig, MedMambaForImageClassification, VMUNetConfig, VMUNetForSegmentation

    small = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "drop_path_rate": 0.0, "scan_backend": "chunked"}
    return {
        "medmamba": MedMambaForImageClassification(MedMambaConfig(**small, id2label={0: "a", 1: "b"})),
        "vmunet": VMUNetForSegmentation(
            VMUNetConfig(**small, depths_decoder=[1, 1, 1, 1], id2label={0: "background", 1: "lesion"})
        ),
    }


def model_outputs_and_grads(model, images):
    model.zero_grad()
    logits = model(pixel_values=images).logits
    logits.float().square().mean().backward()
    return logits.detach().float(), {
        k: p.grad.float().clone() for k, p in model.named_parameters() if p.grad is not None
    }


def assert_model_matches_chunked(monkeypatch, name, size, batch, out_tol, grad_tol):
    model = tiny_models()[name].to(DEVICE).eval()  # gradients flow in eval mode too; BatchNorm uses its statistics
    images = torch.randn(batch, 3, size, size, device=DEVICE)
    logits, grads = model_outputs_and_grads(model, images)
    grids = count_triton_scans(monkeypatch)
    logits_t, grads_t = model_outputs_and_grads(copy.deepcopy(model).set_scan_backend("triton"), images)
    assert len(grids) >= 4, grids  # every stage scanned by Triton
    assert rel_err(logits_t, logits) <= out_tol
    worst = max(grads, key=lambda k: rel_err(grads_t[k], grads[k]))
    assert rel_err(grads_t[worst], grads[worst]) <= grad_tol, worst
