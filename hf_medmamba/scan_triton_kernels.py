"""The Triton kernels of the ``"triton"`` scan backend: the forward and backward recurrences (see `scan_triton`).

The module imports without Triton (remote code must): the kernels are then plain functions that nothing launches, and
their ``tl.constexpr`` annotations stay strings, which Triton reads as well. Whether the kernels run compiled on a GPU
or in Triton's CPU interpreter is fixed when Triton imports (``TRITON_INTERPRET=1``).

One program owns one batch element, one direction ``k`` of ``K`` and a block of ``BLOCK_D`` channels of that direction,
which all read the same B/C group. Channel ``c`` of direction ``k`` reads ``u`` row ``c`` and row ``r = k * Dk + c`` of
``delta``, ``A``, ``D`` and ``delta_bias``; at step ``t`` it visits position ``p = order[k, t]`` (``p = t`` without a
direction table). Outputs that several programs write (the ``K`` directions of a shared ``u`` row, the blocks of one
B/C group) are either added atomically (``ATOMIC_*``) or written with a stride of their own into a partial buffer that
the caller sums: the strides passed in make both the same code. None-valued pointers switch features off at compile
time.
"""

from __future__ import annotations


try:  # inside try: transformers' remote-code check then does not list Triton as a requirement
    import triton.language as tl
    from triton import jit
except Exception:  # no Triton, or one that fails to import: `scan_triton` reports the backend unavailable
    tl = None

    def jit(fn):
        return fn


@jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@jit
def _softplus(x):
    """log(1 + e^x) to a few ulp (Goldberg's log1p), and x itself above 20 as in mamba-ssm."""
    e = tl.exp(tl.minimum(x, 20.0))
    e1 = 1.0 + e
    tiny = e1 == 1.0
    return tl.where(x > 20.0, x, tl.where(tiny, e, tl.log(e1) * (e / tl.where(tiny, 1.0, e1 - 1.0))))


@jit
def _program(K, Dk, dg, nblk, BLOCK_D: tl.constexpr):
    """Batch b, direction k, channels c and parameter rows r of this program, its B/C group and block in the group."""
    pid = tl.program_id(0)
    blk = pid % nblk
    k = (pid // nblk) % K
    b = (pid // (nblk * K)).to(tl.int64)
    first = k * Dk + blk * BLOCK_D
    c = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    return b, k, c, k * Dk + c, first // dg, first % dg // BLOCK_D


@jit
def _parameters(A_ptr, D_ptr, bias_ptr, r, s, s_mask, sA_r, sA_n, COMPUTE: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (BLOCK_D, BLOCK_N) with zeros in the padding lanes, D and delta_bias (zeros when absent)."""
    A = tl.load(A_ptr + r[:, None] * sA_r + s[None, :] * sA_n, mask=s_mask[None, :], other=0.0).to(COMPUTE)
    Dv = tl.zeros((BLOCK_D,), dtype=COMPUTE)
    bias = tl.zeros((BLOCK_D,), dtype=COMPUTE)
    if D_ptr is not None:
        Dv = tl.load(D_ptr + r).to(COMPUTE)
    if bias_ptr is not None:
        bias = tl.load(bias_ptr + r).to(COMPUTE)
    return A, Dv, bias


@jit
def _step(order_ptr, k, L, t, u_row, d_row, B_row, bias, su_l, sd_l, sB_l, s_mask,
          SOFTPLUS: tl.constexpr, COMPUTE: tl.constexpr):  # fmt: skip
    """Position p of step t and the inputs there: u, delta + bias, the step size dt and B."""
    p = t
    if order_ptr is not None:
        p = tl.load(order_ptr + k * L + t).to(tl.int64)
    uu = tl.load(u_row + p * su_l).to(COMPUTE)
    x = tl.load(d_row + p * sd_l).to(COMPUTE) + bias
    dt = x
    if SOFTPLUS:
        dt = _softplus(x)
    Bt = tl.load(B_row + p * sB_l, mask=s_mask, other=0.0).to(COMPUTE)
    return p, uu, x, dt, Bt


@jit
def scan_forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, order_ptr,
    y_ptr, last_ptr, ckpt_ptr,
    L, Dk, dg, n, nblk, K, chunk,
    su_b, su_c, su_l, sd_b, sd_c, sd_l, sA_r, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sz_b, sz_c, sz_l,
    sy_b, sy_k, sy_c, sy_l,
    SOFTPLUS: tl.constexpr, ATOMIC_Y: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """y_t = (<h_t, C_t> + D u_t) * silu(z_t); the state before every chunk goes to ``ckpt``, h_L to ``last``."""
    b, k, c, r, group, _ = _program(K, Dk, dg, nblk, BLOCK_D)
    s = tl.arange(0, BLOCK_N)
    s_mask = s < n
    rows = b * (K * Dk) + r  # rows of the (b, K * Dk, ...) state buffers
    A, Dv, bias = _parameters(A_ptr, D_ptr, bias_ptr, r, s, s_mask, sA_r, sA_n, COMPUTE, BLOCK_D)
    u_row = u_ptr + b * su_b + c * su_c
    d_row = delta_ptr + b * sd_b + r * sd_c
    B_row = B_ptr + b * sB_b + group * sB_g + s * sB_n
    C_row = C_ptr + b * sC_b + group * sC_g + s * sC_n
    y_row = y_ptr + b * sy_b + k * sy_k + c * sy_c

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=COMPUTE)
    nchunks = tl.cdiv(L, chunk)
    for j in range(0, nchunks):
        if ckpt_ptr is not None:
            tl.store(ckpt_ptr + (rows[:, None] * nchunks + j) * n + s[None, :], h, mask=s_mask[None, :])
        for t in range(j * chunk, tl.minimum(j * chunk + chunk, L)):
            p, uu, _, dt, Bt = _step(order_ptr, k, L, t, u_row, d_row, B_row, bias, su_l, sd_l, sB_l, s_mask,
                                     SOFTPLUS, COMPUTE)  # fmt: skip
            Ct = tl.load(C_row + p * sC_l, mask=s_mask, other=0.0).to(COMPUTE)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1) + Dv * uu
            if z_ptr is not None:
                zz = tl.load(z_ptr + b * sz_b + c * sz_c + p * sz_l).to(COMPUTE)
                y *= zz * _sigmoid(zz)
            if ATOMIC_Y:
                tl.atomic_add(y_row + p * sy_l, y)
            else:
                tl.store(y_row + p * sy_l, y)
    if last_ptr is not None:
        tl.store(last_ptr + rows[:, None] * n + s[None, :], h, mask=s_mask[None, :])


@jit
def scan_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, order_ptr,
    ckpt_ptr, dy_ptr, dlast_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dz_ptr,
    L, Dk, dg, n, nblk, K, chunk,
    su_b, su_c, su_l, sd_b, sd_c, sd_l, sA_r, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sz_b, sz_c, sz_l,
    sdy_b, sdy_c, sdy_l, sdu_b, sdu_k, sdu_c, sdu_l, sg_b, sg_g, sg_j, sg_n, sg_l,
    SOFTPLUS: tl.constexpr, ATOMIC_U: tl.constexpr, ATOMIC_BC: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The adjoint g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} (g after the last step: ``dlast``), chunk by chunk from
    the end.

    Each chunk first re-runs the forward from its checkpoint and parks the state before every step in ``scratch``
    (``chunk`` states per program), then walks its steps backwards reading them. ``dA``, ``dD`` and ``dbias`` are
    per-batch partial sums (b, K * Dk, ...); ``ddelta`` and ``dz`` are contiguous (b, K * Dk, L) and (b, Dk, L).
    """
    b, k, c, r, group, jb = _program(K, Dk, dg, nblk, BLOCK_D)
    s = tl.arange(0, BLOCK_N)
    s_mask = s < n
    rows = b * (K * Dk) + r
    A, Dv, bias = _parameters(A_ptr, D_ptr, bias_ptr, r, s, s_mask, sA_r, sA_n, COMPUTE, BLOCK_D)
    u_row = u_ptr + b * su_b + c * su_c
    d_row = delta_ptr + b * sd_b + r * sd_c
    B_row = B_ptr + b * sB_b + group * sB_g + s * sB_n
    C_row = C_ptr + b * sC_b + group * sC_g + s * sC_n
    dy_row = dy_ptr + b * sdy_b + c * sdy_c
    du_row = du_ptr + b * sdu_b + k * sdu_k + c * sdu_c
    g_row = b * sg_b + group * sg_g + jb * sg_j + s * sg_n
    state = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + s[None, :]
    park = scratch_ptr + tl.program_id(0).to(tl.int64) * chunk * (BLOCK_D * BLOCK_N) + state

    g_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=COMPUTE)
    if dlast_ptr is not None:
        g_next += tl.load(dlast_ptr + rows[:, None] * n + s[None, :], mask=s_mask[None, :], other=0.0).to(COMPUTE)
    dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=COMPUTE)
    dD = tl.zeros((BLOCK_D,), dtype=COMPUTE)
    dbias = tl.zeros((BLOCK_D,), dtype=COMPUTE)

    nchunks = tl.cdiv(L, chunk)
    for jj in range(0, nchunks):
        j = nchunks - 1 - jj
        t0 = j * chunk
        t1 = tl.minimum(t0 + chunk, L)
        h = tl.load(ckpt_ptr + (rows[:, None] * nchunks + j) * n + s[None, :], mask=s_mask[None, :], other=0.0)
        for t in range(t0, t1):  # re-run the chunk, parking h_{t-1}
            tl.store(park + (t - t0) * (BLOCK_D * BLOCK_N), h)
            _, uu, _, dt, Bt = _step(order_ptr, k, L, t, u_row, d_row, B_row, bias, su_l, sd_l, sB_l, s_mask,
                                     SOFTPLUS, COMPUTE)  # fmt: skip
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
        tl.debug_barrier()
        for tt in range(0, t1 - t0):  # h is h_t: walk back through the chunk
            t = t1 - 1 - tt
            h_prev = tl.load(park + (t - t0) * (BLOCK_D * BLOCK_N))
            p, uu, x, dt, Bt = _step(order_ptr, k, L, t, u_row, d_row, B_row, bias, su_l, sd_l, sB_l, s_mask,
                                     SOFTPLUS, COMPUTE)  # fmt: skip
            Ct = tl.load(C_row + p * sC_l, mask=s_mask, other=0.0).to(COMPUTE)
            a = tl.exp(dt[:, None] * A)
            ds = tl.load(dy_row + p * sdy_l).to(COMPUTE)  # becomes d loss / d(<h_t, C_t> + D u_t)
            if z_ptr is not None:
                zz = tl.load(z_ptr + b * sz_b + c * sz_c + p * sz_l).to(COMPUTE)
                sig = _sigmoid(zz)
                pre = tl.sum(h * Ct[None, :], axis=1) + Dv * uu
                tl.store(dz_ptr + rows * L + p, ds * pre * sig * (1.0 + zz * (1.0 - sig)))
                ds = ds * zz * sig
            g = ds[:, None] * Ct[None, :] + g_next
            dtu = tl.sum(g * Bt[None, :], axis=1)  # d loss / d(dt u)
            w = g * a * h_prev  # d/d(dt) and d/dA of exp(dt A) h_{t-1} both read it
            ddt = dtu * uu + tl.sum(w * A, axis=1)
            if SOFTPLUS:
                ddt = tl.where(x > 20.0, ddt, ddt * _sigmoid(x))
            dA += w * dt[:, None]
            dD += ds * uu
            dbias += ddt
            dB_t = tl.sum(g * (dt * uu)[:, None], axis=0)
            dC_t = tl.sum(ds[:, None] * h, axis=0)
            g_next = a * g
            h = h_prev
            tl.store(ddelta_ptr + rows * L + p, ddt)
            if ATOMIC_U:
                tl.atomic_add(du_row + p * sdu_l, dtu * dt + ds * Dv)
            else:
                tl.store(du_row + p * sdu_l, dtu * dt + ds * Dv)
            if ATOMIC_BC:
                tl.atomic_add(dB_ptr + g_row + p * sg_l, dB_t, mask=s_mask)
                tl.atomic_add(dC_ptr + g_row + p * sg_l, dC_t, mask=s_mask)
            else:
                tl.store(dB_ptr + g_row + p * sg_l, dB_t, mask=s_mask)
                tl.store(dC_ptr + g_row + p * sg_l, dC_t, mask=s_mask)
        tl.debug_barrier()  # the next chunk parks into the same scratch
    tl.store(dA_ptr + rows[:, None] * n + s[None, :], dA, mask=s_mask[None, :])
    if D_ptr is not None:
        tl.store(dD_ptr + rows, dD)
    if bias_ptr is not None:
        tl.store(dbias_ptr + rows, dbias)
