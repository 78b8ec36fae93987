"""What every selective-scan backend shares: input checks and the dtype rule.

Shapes (mamba-ssm's ``selective_scan_fn``): ``u, delta, z`` (b, d, L); ``A`` (d, n) real; ``B, C`` (b, n, L) or
grouped (b, g, n, L), channel ``c`` reading group ``c // (d // g)``; ``D, delta_bias`` (d,).

Dtype rule: the scan is computed in float32, or in float64 when an input is float64 (gradcheck); half-precision
inputs are computed in float32. The dispatch applies it once (autocast off, inputs cast); the backends receive
compute-dtype tensors with B and C in grouped form.
"""

import torch
import torch.nn.functional as F


# exp() of arguments below about -87.3 returns float32 subnormals through a path about 25x slower than the normal one.
# Clamping dt * A there changes a decay of at most 1.2e-38 into 1.3e-38: invisible next to any state it multiplies.
LOG_DECAY_FLOOR = -87.0


def compute_dtype(*tensors):
    """float32, or float64 when an input is float64; half inputs are computed in float32."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def cast(t, dtype):
    """``t`` in ``dtype`` (None stays None; no op when it already is)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def check_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """Validate the shapes and return ``B`` and ``C`` in grouped form (b, g, n, L)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must have shape (batch, channels, length), got {tuple(u.shape)}.")
    b, d, L = u.shape
    if L == 0:
        raise ValueError("selective_scan: the sequence is empty (length 0); the scan needs at least one step.")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta has shape {tuple(delta.shape)}, expected u's shape {tuple(u.shape)}.")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must have shape (channels={d}, d_state), got {tuple(A.shape)}.")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported; pass a real A (here A = -exp(A_logs)).")
    n = A.shape[1]
    grouped = []
    for name, x in (("B", B), ("C", C)):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[0] != b or x.shape[2] != n or x.shape[3] != L:
            raise ValueError(
                f"selective_scan: {name} must have shape (batch={b}, d_state={n}, length={L}) or "
                f"(batch, groups, d_state, length), got {tuple(x.shape)}. "
                f"Time-invariant (d, n) {name} is not supported."
            )
        if d % x.shape[1] != 0:
            raise ValueError(f"selective_scan: {name} has {x.shape[1]} groups, which does not divide {d} channels.")
        grouped.append(x)
    if grouped[0].shape[1] != grouped[1].shape[1]:
        raise ValueError("selective_scan: B and C must have the same number of groups.")
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and x.shape != (d,):
            raise ValueError(f"selective_scan: {name} must have shape ({d},), got {tuple(x.shape)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z has shape {tuple(z.shape)}, expected u's shape {tuple(u.shape)}.")
    return grouped


def step_sizes(delta, delta_bias, delta_softplus):
    """dt = softplus(delta + bias) with mamba's threshold of 20 (identity above it)."""
    if delta_bias is not None:
        delta = delta + delta_bias.unsqueeze(-1)
    return F.softplus(delta) if delta_softplus else delta


def skip_and_gate(y, u, D, z):
    """Add the ``D * u`` skip and apply the ``silu(z)`` gate."""
    if D is not None:
        y = y + u * D.unsqueeze(-1)
    if z is not None:
        y = y * F.silu(z)
    return y
