import pytest
import torch
import torch.nn.functional as F

from hf_medmamba import MedMambaConfig
from hf_medmamba.selective_scan import selective_scan
from hf_medmamba.ss2d import SS2D

from .conftest import key_list, pixel_orders


def ss2d(d_model=8, **settings):
    """An SS2D with the SSM settings of a config built from ``settings`` (default d_state 4)."""
    return SS2D(MedMambaConfig(**{"d_state": 4, **settings}), d_model)


def perturb(module, seed=0):
    """Random values everywhere, so that a swapped or dropped parameter shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.3 if name != "dt_projs_bias" else 1.0
            p.copy_(p + scale * torch.randn(p.shape, generator=gen))
    return module


def direct_direction(module, x, k):
    """Direction k of SS2D's scan computed from its definition: gather the pixels in order, project, scan, scatter."""
    B, E, H, W = x.shape
    order = pixel_orders(H, W)[k]
    seq = torch.stack([x[:, :, h, w] for h, w in order], dim=-1).double()  # (B, E, L)
    R, N = module.dt_rank, module.d_state
    x_dbl = torch.einsum("ce,bel->bcl", module.x_proj_weight[k].double(), seq)
    dt, Bs, Cs = x_dbl.split([R, N, N], dim=1)
    dt = torch.einsum("er,brl->bel", module.dt_projs_weight[k].double(), dt)
    rows = slice(k * E, (k + 1) * E)
    y = selective_scan(
        seq,
        dt,
        -torch.exp(module.A_logs[rows].double()),
        Bs,
        Cs,
        D=module.Ds[rows].double(),
        delta_bias=module.dt_projs_bias[k].double(),
        delta_softplus=True,
        backend="reference",
    )
    out = torch.zeros(B, E, H, W, dtype=torch.float64)
    for idx, (h, w) in enumerate(order):
        out[:, :, h, w] = y[:, :, idx]
    return out.flatten(2)


@pytest.mark.parametrize("k", range(4))
def test_each_direction_against_direct_computation(k):
    """Silence the other three directions (no B/C/dt input, no skip) and compare one direction with its definition."""
    torch.manual_seed(k)
    module = perturb(ss2d(8)).double()
    with torch.no_grad():
        for other in set(range(4)) - {k}:
            module.x_proj_weight[other].zero_()
            module.Ds[other * module.d_inner : (other + 1) * module.d_inner].zero_()
    x = torch.randn(2, module.d_inner, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(module.scan(x).double(), direct_direction(module, x, k), rtol=1e-5, atol=1e-6)


def test_full_scan_is_the_sum_of_directions():
    module = perturb(ss2d(8))
    x = torch.randn(2, module.d_inner, 6, 3)
    expected = sum(direct_direction(module, x, k) for k in range(4))
    got = module.scan(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_forward_against_direct_computation():
    module = perturb(ss2d(8)).eval()
    hidden = torch.randn(2, 6, 3, 8)
    xz = module.in_proj(hidden)
    x, z = xz[..., : module.d_inner], xz[..., module.d_inner :]  # first half -> scan, second half -> gate
    x = F.silu(module.conv2d(x.permute(0, 3, 1, 2)))
    y = sum(direct_direction(module, x, k) for k in range(4)).float()
    y = module.out_norm(y.transpose(1, 2).reshape(2, 6, 3, -1))
    expected = module.out_proj(y * F.silu(z))
    torch.testing.assert_close(module(hidden), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "chunked", "cpu_kernel"])
def test_backends_agree(backend):
    module = perturb(ss2d(8))
    hidden = torch.randn(2, 5, 7, 8)
    module.config.scan_backend = "reference"
    expected = module(hidden)
    module.config.scan_backend = backend
    torch.testing.assert_close(module(hidden), expected, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_keeps_the_scan_in_float32():
    module = perturb(ss2d(8))
    hidden = torch.randn(2, 4, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(hidden)
        scan_out = module.scan(torch.randn(2, module.d_inner, 4, 4, dtype=torch.bfloat16))
    assert scan_out.dtype == torch.float32
    assert out.dtype == torch.bfloat16  # out_proj runs under autocast, as upstream
    torch.testing.assert_close(out.float(), module(hidden), rtol=0.05, atol=0.05)


def test_bf16_module_runs():
    module = perturb(ss2d(8))
    hidden = torch.randn(1, 4, 5, 8)
    expected = module(hidden)
    out = module.to(torch.bfloat16)(hidden.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)


def test_gradients_reach_every_parameter():
    module = perturb(ss2d(8))
    module(torch.randn(2, 3, 5, 8)).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def upstream_ss2d_entries(width):
    """Keys and shapes below one SS2D of MedMamba-T whose width is `width` (48, 96, 192, 384 per stage)."""
    stage = {48: 0, 96: 1, 192: 2, 384: 3}[width]
    prefix = f"layers.{stage}.blocks.0.self_attention."
    entries = key_list("medmamba_t_state_dict.txt")
    return {k[len(prefix) :]: shape for k, (shape, _) in entries.items() if k.startswith(prefix)}


@pytest.mark.parametrize("width", [48, 96, 192, 384])
def test_state_dict_matches_upstream(width):
    expected = upstream_ss2d_entries(width)
    assert len(expected) == 11
    module = SS2D(MedMambaConfig(), width)  # the default SSM settings, as upstream
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert got == expected


def test_upstream_initialisation():
    module = ss2d(64, d_state=16)
    E, R = module.d_inner, module.dt_rank
    assert (E, R) == (128, 4)
    torch.testing.assert_close(module.A_logs, torch.log(torch.arange(1, 17.0)).expand(4 * E, -1))
    assert torch.equal(module.Ds, torch.ones(4 * E))
    assert module.x_proj_weight.abs().max() <= E**-0.5
    assert module.dt_projs_weight.abs().max() <= R**-0.5
    dt = F.softplus(module.dt_projs_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    # log-uniform: about half of the step sizes lie below the geometric mean of dt_min and dt_max (0.01)
    assert 0.4 < (dt < 0.01).float().mean() < 0.6
