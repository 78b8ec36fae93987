"""SS2D's four scan directions (`hf_medmamba.scan_directions`) against their definition written out pixel by pixel,
on odd and even, square and non-square grids; and every backend's four-direction scan against the same definition."""

from functools import partial

import pytest
import torch

from hf_medmamba import selective_scan as ss
from hf_medmamba.scan_directions import MERGE_ORDER, cross_merge, scan_orders, scan_steps, to_scan_orders

from .conftest import pixel_orders, rel_err


SIZES = [(1, 1), (5, 7), (6, 3), (4, 4), (2, 9)]


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_scan_orders_follow_the_definition(H, W):
    orders = scan_orders(H, W)
    for k, order in enumerate(pixel_orders(H, W)):
        assert orders[k].tolist() == [h * W + w for h, w in order], f"direction {k}"
    steps = scan_steps(H, W)
    for k in range(4):
        assert torch.equal(orders[k][steps[k]], torch.arange(H * W))  # steps is the inverse of orders


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_to_scan_orders_gathers_each_direction(H, W):
    x = torch.randn(2, 4, 3, H * W)
    xs = to_scan_orders(x, H, W)
    for k, order in enumerate(pixel_orders(H, W)):
        pixels = x[:, k].view(2, 3, H, W)
        assert torch.equal(xs[:, k], torch.stack([pixels[:, :, h, w] for h, w in order], dim=-1)), f"direction {k}"


@pytest.mark.parametrize(("H", "W"), SIZES)
def test_cross_merge_puts_every_direction_back_in_upstream_order(H, W):
    ys = torch.randn(2, 4, 3, H * W)
    back = torch.zeros(4, 2, 3, H, W)
    for k, order in enumerate(pixel_orders(H, W)):
        for idx, (h, w) in enumerate(order):
            back[k, :, :, h, w] = ys[:, k, :, idx]
    expected = back[0] + back[2] + back[1] + back[3]  # upstream's y0 + y2 + y1 + y3, in this float order
    assert MERGE_ORDER == (0, 2, 1, 3)
    assert torch.equal(cross_merge(ys, H, W).view(2, 3, H, W), expected)


def written_out_cross_scan(u, delta, A, B, C, D, delta_bias, H, W):
    """SS2D's scan from the definition: per direction, gather the pixels in its order, scan (reference, float64),
    put the outputs back at their pixels; sum."""
    E = u.shape[1]
    out = torch.zeros(u.shape, dtype=torch.float64)
    for k, order in enumerate(pixel_orders(H, W)):
        index = torch.tensor([h * W + w for h, w in order])
        rows = slice(k * E, (k + 1) * E)
        y = ss.selective_scan(
            u[..., index].double(),
            delta[:, rows][..., index].double(),
            A[rows].double(),
            B[:, k][..., index].double(),
            C[:, k][..., index].double(),
            D=D[rows].double(),
            delta_bias=delta_bias[rows].double(),
            delta_softplus=True,
            backend="reference",
        )
        out[..., index] += y
    return out


@pytest.mark.parametrize("backend", ["reference", "chunked", "export", "cpu_kernel"])
@pytest.mark.parametrize(("H", "W"), [(5, 7), (4, 4), (1, 6)])
def test_every_backend_scans_the_four_directions_as_defined(backend, H, W):
    gen = torch.Generator().manual_seed(H * 10 + W)
    b, E, n, L = 2, 4, 16, H * W
    args = [
        torch.randn(b, E, L, generator=gen),
        torch.randn(b, 4 * E, L, generator=gen),
        -torch.exp(torch.randn(4 * E, n, generator=gen)),
        torch.randn(b, 4, n, L, generator=gen),
        torch.randn(b, 4, n, L, generator=gen),
        torch.randn(4 * E, generator=gen),
        torch.randn(4 * E, generator=gen),
    ]
    got = partial(ss.cross_selective_scan, backend=backend)(*args, H, W)
    assert got.dtype == torch.float32
    assert rel_err(got, written_out_cross_scan(*args, H, W)) <= 1e-5
