"""SS2D's four scan directions over an H x W grid, defined once for every backend.

Direction ``k`` visits the pixels (row-major index ``p = h * W + w``) in the order ``scan_orders(H, W)[k]``:
``k = 0`` row-major, ``k = 1`` column-major (down each column, then the next column), ``k = 2`` the reverse of 0,
``k = 3`` the reverse of 1 (upstream SS2D's ``xs``). Per-direction parameters are stacked with this ``k``
(``x_proj_weight[k]``, rows ``k * E + c`` of ``A_logs`` and ``Ds``). The four outputs are put back at their pixels and
summed in `MERGE_ORDER`, upstream's ``y0 + y2 + y1 + y3``: float32 sums in that order reproduce upstream bit for bit.

The pure-PyTorch backends gather with these tables (`to_scan_orders`) and scatter back (`cross_merge`); the export
backend builds its step-major index from them; the compiled CPU kernel and the Triton kernel take the table and the
merge order as arguments.
"""

import torch


NUM_DIRECTIONS = 4
MERGE_ORDER = (0, 2, 1, 3)


def scan_orders(height, width, device=None):
    """(4, L) int64: entry ``[k, t]`` is the pixel that direction ``k`` visits at step ``t``."""
    row_major = torch.arange(height * width, device=device)
    column_major = row_major.view(height, width).t().reshape(-1)
    return torch.stack([row_major, column_major, row_major.flip(0), column_major.flip(0)])


def scan_steps(height, width, device=None):
    """(4, L) int64, the inverse of `scan_orders`: entry ``[k, p]`` is the step at which direction ``k`` visits
    pixel ``p``."""
    orders = scan_orders(height, width, device)
    steps = torch.empty_like(orders)
    return steps.scatter_(1, orders, torch.arange(orders.shape[1], device=device).expand_as(orders))


def to_scan_orders(t, height, width):
    """(B, 4, X, L) pixel-ordered, one slice per direction -> slice ``k`` in direction ``k``'s scan order."""
    index = scan_orders(height, width, t.device).view(1, NUM_DIRECTIONS, 1, -1).expand_as(t)
    return torch.gather(t, -1, index)


def cross_merge(ys, height, width):
    """(B, 4, E, L) in the four scan orders -> (B, E, L) pixel-ordered: each direction put back at its pixels, summed
    in `MERGE_ORDER`."""
    index = scan_steps(height, width, ys.device).view(1, NUM_DIRECTIONS, 1, -1).expand_as(ys)
    at_pixels = torch.gather(ys, -1, index)
    first, *rest = MERGE_ORDER
    merged = at_pixels[:, first]
    for k in rest:
        merged = merged + at_pixels[:, k]
    return merged
