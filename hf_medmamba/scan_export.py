"""The export backend: the recurrence as a scan of a pure step function, traceable by `torch.export` and exportable
to ONNX (what ``"auto"`` runs while `torch.export` traces).

The compiled kernels are opaque to tracing, and the chunked scan's in-place block buffers and custom autograd.Function
do not trace into a portable graph. Here one step, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t and y_t = <h_t, C_t>, is
a pure function scanned over L with `torch._higher_order_ops.scan` when traced (one ONNX ``Scan`` node whatever L,
its body six small ops; L may even stay symbolic), and with a Python loop over the same function in eager mode.
Unrolled chunked formulations and a two-level scan were measured against it: see benchmarks/bench_export.py.
"""

import torch

from .scan_common import skip_and_gate
from .scan_directions import NUM_DIRECTIONS, scan_orders, scan_steps


def _scan_steps(step, init, xs):
    """``(last carry, stacked outputs)`` of ``carry, y = step(carry, x)`` over the first axis of the tensors ``xs``."""
    if torch.compiler.is_compiling():  # torch.export, torch.compile: a higher-order op (ONNX Scan)
        from torch._higher_order_ops import scan

        return scan(step, init, xs)
    carry, ys = init, []
    for x in zip(*(t.unbind(0) for t in xs)):
        carry, y = step(carry, x)
        ys.append(y)
    return carry, torch.stack(ys)


def _export_scan_core(dt, dtu, B, C, A):
    """The recurrence over the first axis of step-major inputs with leading dims ``lead`` (channels innermost).

    ``dt``, ``dtu = dt * u``: (L, *lead, 1, m); ``B``: (L, *lead, n, 1); ``C``: (L, *lead, 1, n); ``A`` broadcasts to
    (*lead, n, m). Returns y (L, *lead, 1, m) and the last state (*lead, n, m).
    """
    A = A.contiguous()  # the carry must keep the layout of the initial state

    def step(h, inputs):
        dt_t, dtu_t, B_t, C_t = inputs
        h = torch.exp(dt_t * A) * h + dtu_t * B_t
        return h, torch.matmul(C_t, h)

    init = dt.new_zeros((*dt.shape[1:-2], B.shape[-2], dt.shape[-1]))
    last, y = _scan_steps(step, init, (dt, dtu, B, C))
    return y, last


def softplus(x):
    """`F.softplus` (threshold 20) from elementwise ops that onnxruntime runs about twice as fast as its Softplus.

    log1p(e^x) uses Goldberg's log1p(y) = log(1 + y) * y / ((1 + y) - 1), accurate to a few ulp: ONNX has no Log1p, and
    a plain log(1 + y) would lose the small step sizes. Both branches stay finite, so gradients do too.
    """
    y = torch.exp(x.clamp(max=21.0))  # clamped past the threshold: no clamp gradient (0 on torch 2.14) at x = 20
    u = 1 + y
    d = u - 1
    tiny = d == 0  # y below half an ulp of 1: log1p(y) = y
    log1p = torch.where(tiny, y, torch.log(u) * (y / torch.where(tiny, 1.0, d)))
    return torch.where(x > 20.0, x, log1p)


def scan_export(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """``(y, h_L)`` for compute-dtype inputs with grouped ``B``, ``C`` (b, g, n, L) (see `scan_common`)."""
    dt = delta if delta_bias is None else delta + delta_bias.unsqueeze(-1)
    dt = softplus(dt) if delta_softplus else dt

    b, d, L = u.shape
    g, n = B.shape[1], B.shape[2]
    dg = d // g
    steps = (  # (L, b, g, ...): states (b, g, n, dg)
        dt.reshape(b, g, 1, dg, L),
        (dt * u).reshape(b, g, 1, dg, L),
        B.unsqueeze(3),  # (b, g, n, 1, L)
        C.unsqueeze(2),  # (b, g, 1, n, L)
    )
    steps = [t.movedim(-1, 0).contiguous() for t in steps]
    y, last = _export_scan_core(*steps, A.reshape(g, dg, n).transpose(1, 2))
    y = skip_and_gate(y.permute(1, 2, 3, 4, 0).reshape(b, d, L), u, D, z)
    return y, last.transpose(-1, -2).reshape(b, d, n)


def _direction_rows(height, width, device):
    """Indices that gather SS2D's four scan orders step-major, and put them back, with one ``index_select`` each.

    Entry ``t * K + k`` of the first two: the pixel that direction k visits at step t, and that pixel's row
    ``pixel * K + k`` in a pixel-major, per-direction input. Entry ``p * K + k`` of the third: the row ``t * K + k`` of
    the step-major output at which direction k visits pixel p. Each has K * L entries.
    """
    K = NUM_DIRECTIONS
    order, inverse = scan_orders(height, width, device), scan_steps(height, width, device)
    direction = torch.arange(K, device=device).unsqueeze(1)
    return order.t().reshape(-1), (order * K + direction).t().reshape(-1), (inverse * K + direction).t().reshape(-1)


def cross_scan_export(u, delta, A, B, C, D, delta_bias, height, width):
    """SS2D's four-direction scan on the export backend (contract of `selective_scan.cross_selective_scan`): the four
    directions gathered step-major with one ``index_select`` per input, scanned together (states (4, b, n, E)), and
    gathered back to their pixels. The directions are summed in pixel order k = 0..3 (rounding differs from
    `scan_directions.MERGE_ORDER` by float32 ulps; ONNX graphs are compared within the output tolerance)."""
    batch, E, L = u.shape
    K, n = B.shape[1], B.shape[2]
    step_pixel, step_row, pixel_row = _direction_rows(height, width, u.device)

    def gather(rows, index):  # (K * L or L, b, X) rows -> (L, K, b, X), step-major
        return rows.index_select(0, index).view(L, K, batch, rows.shape[-1])

    us = gather(u.permute(2, 0, 1), step_pixel)
    deltas = gather(delta.view(batch, K, E, L).permute(3, 1, 0, 2).reshape(L * K, batch, E), step_row)
    Bs = gather(B.permute(3, 1, 0, 2).reshape(L * K, batch, n), step_row)
    Cs = gather(C.permute(3, 1, 0, 2).reshape(L * K, batch, n), step_row)
    dt = softplus(deltas if delta_bias is None else deltas + delta_bias.view(K, 1, E))
    A = A.view(K, 1, E, n).transpose(-1, -2)  # (K, 1, n, E)
    y, _ = _export_scan_core(dt.unsqueeze(-2), (dt * us).unsqueeze(-2), Bs.unsqueeze(-1), Cs.unsqueeze(-2), A)
    y = y.view(L * K, batch, E).index_select(0, pixel_row).view(L, K, batch, E).sum(1).permute(1, 2, 0)
    return y if D is None else y + u * D.view(K, E).sum(0).unsqueeze(-1)  # the D * u skips of the four directions
