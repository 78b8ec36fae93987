"""The export scan backend (`hf_medmamba.scan_export`) on its own, in eager mode: equal to the reference through the
dispatch and in SS2D's four-direction scan, its onnxruntime-friendly softplus, and when ``"auto"`` picks it."""

import pytest
import torch

from hf_medmamba import scan_export
from hf_medmamba import selective_scan as ss

from .conftest import OPTIONS, call, make_inputs


def test_export_scan_through_the_dispatch_and_cross_scan():
    inp = make_inputs(2, 8, 20, 4, 2)
    expected = call(ss.selective_scan, inp, OPTIONS[0], backend="reference")
    torch.testing.assert_close(call(ss.selective_scan, inp, OPTIONS[0], backend="export"), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert call(ss.selective_scan, inp, OPTIONS[0], backend="export").dtype == torch.float32

    gen = torch.Generator().manual_seed(0)
    b, E, n, h, w = 2, 6, 4, 5, 7  # a non-square grid: the column-major orders must be right
    args = (
        torch.randn(b, E, h * w, generator=gen),
        torch.randn(b, 4 * E, h * w, generator=gen),
        -torch.rand(4 * E, n, generator=gen) - 0.5,
        torch.randn(b, 4, n, h * w, generator=gen),
        torch.randn(b, 4, n, h * w, generator=gen),
        torch.randn(4 * E, generator=gen),
        torch.randn(4 * E, generator=gen),
        h,
        w,
    )
    torch.testing.assert_close(
        ss.cross_selective_scan(*args, backend="export"), ss.cross_selective_scan(*args, backend="reference")
    )


def test_export_softplus_matches_torch():
    """The export backend's softplus (Goldberg's log1p, for onnxruntime) equals F.softplus to a few ulp."""
    x = torch.cat([torch.linspace(-85, 60, 100_001), torch.tensor([0.0, 20.0, -20.0, 1e-8, -1e-8])])
    exact = torch.nn.functional.softplus(x.double())
    assert ((scan_export.softplus(x).double() - exact).abs() / exact).max() <= 4e-7
    assert ((scan_export.softplus(x.double()) - exact).abs() / exact).max() <= 1e-14
    leaf = x.clone().requires_grad_()
    scan_export.softplus(leaf).sum().backward()
    torch.testing.assert_close(leaf.grad, torch.sigmoid(x), rtol=0, atol=1e-5)


def test_export_backend_resolution(monkeypatch):
    assert ss.resolve_scan_backend("export", "cpu") == "export"
    assert ss.resolve_scan_backend("export", "cuda") == "export"  # pure PyTorch: any device
    assert ss.resolve_scan_backend("auto", "cpu") != "export"  # the runtime paths are unchanged
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", True)  # as inside torch.export
    assert ss.resolve_scan_backend("auto", "cpu") == "export"
    assert ss.resolve_scan_backend("chunked", "cpu") == "chunked"
    for forced in ("cpu_kernel", "mamba_ssm"):
        with pytest.raises(RuntimeError, match="cannot be exported"):
            ss.resolve_scan_backend(forced, "cpu")
