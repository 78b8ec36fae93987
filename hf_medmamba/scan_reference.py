"""The reference backend: mamba's S6 recurrence one time step at a time (differentiable by autograd).

It is the readable definition and the test oracle, not a fast path. For every batch ``b`` and channel ``c``::

    dt_t = softplus(delta_t + delta_bias_c)                 # softplus only with delta_softplus=True
    h_t  = exp(dt_t * A_c) * h_{t-1} + dt_t * u_t * B_t     # h_0 = 0, elementwise over the n states
    y_t  = <h_t, C_t> + D_c * u_t
    y_t *= silu(z_t)                                        # only when z is given
"""

import torch

from .scan_common import skip_and_gate, step_sizes


def scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """``(y, h_L)`` for compute-dtype inputs with grouped ``B``, ``C`` (b, g, n, L) (see `scan_common`)."""
    dt = step_sizes(delta, delta_bias, delta_softplus)
    b, d, _ = u.shape
    g, n = B.shape[1], B.shape[2]
    dg = d // g  # channels per group of B/C
    A = A.view(g, dg, n)
    h = u.new_zeros(b, g, dg, n)
    ys = []
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
        dt_t, u_t = dt_t.view(b, g, dg, 1), u_t.view(b, g, dg, 1)
        h = torch.exp(dt_t * A) * h + dt_t * u_t * B_t.unsqueeze(2)
        ys.append((h * C_t.unsqueeze(2)).sum(-1).reshape(b, d))
    return skip_and_gate(torch.stack(ys, dim=-1), u, D, z), h.reshape(b, d, n)
