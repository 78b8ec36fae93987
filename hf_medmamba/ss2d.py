"""SS2D, the four-direction 2-D selective scan shared by MedMamba, VMamba (v0) and VM-UNet (upstream ``SS2D``)."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .selective_scan import cross_selective_scan


NUM_DIRECTIONS = 4


def resolve_dt_rank(dt_rank, d_model):
    """``"auto"`` means ceil(d_model / 16), as upstream."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


class SS2D(nn.Module):
    """2-D selective scan over four directions, with upstream's parameter names and shapes.

    Input and output are channels-last ``(batch, height, width, d_model)``. The scan and the merge of the four
    directions run in float32 whatever the input dtype or autocast state.

    Args:
        d_model: width ``D`` of the input and output.
        d_state: SSM state size ``N``.
        d_conv: kernel size of the depthwise convolution.
        expand: inner width ``E = expand * D``.
        dt_rank: rank ``R`` of the step-size projection, or ``"auto"`` for ceil(D / 16).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: step-size initialisation (see `reset_ssm_parameters`).
        conv_bias: bias of the depthwise convolution.
        bias: bias of ``in_proj`` and ``out_proj``.
        layer_norm_eps: epsilon of ``out_norm``.
        scan_backend: backend of `selective_scan` (``"auto"`` chooses per call from the device).
    """

    def __init__(
        self,
        d_model,
        d_state=16,
        d_conv=3,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        dt_init="random",
        dt_scale=1.0,
        dt_init_floor=1e-4,
        conv_bias=True,
        bias=False,
        layer_norm_eps=1e-5,
        scan_backend="auto",
    ):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}.")
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = resolve_dt_rank(dt_rank, d_model)
        self.dt_min, self.dt_max, self.dt_init = dt_min, dt_max, dt_init
        self.dt_scale, self.dt_init_floor = dt_scale, dt_init_floor
        self.scan_backend = scan_backend
        E, K = self.d_inner, NUM_DIRECTIONS

        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv2d = nn.Conv2d(E, E, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=E, bias=conv_bias)
        # Four stacked projections, one per direction: x -> (dt, B, C) and dt -> E channels.
        self.x_proj_weight = nn.Parameter(torch.empty(K, self.dt_rank + 2 * d_state, E))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, E, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, E))
        self.A_logs = nn.Parameter(torch.empty(K * E, d_state))  # row k * E + c
        self.Ds = nn.Parameter(torch.empty(K * E))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(E, eps=layer_norm_eps)
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """Upstream's special initialisation of the bare parameters.

        ``x_proj_weight``: U(±1/sqrt(E)) (PyTorch's Linear default); ``dt_projs_weight``: U(±dt_scale / sqrt(R)) or the
        constant dt_scale / sqrt(R); ``dt_projs_bias``: inverse softplus of dt = exp(U(log dt_min, log dt_max)),
        floored at dt_init_floor; ``A_logs``: log(1..N) in every row (S4D-real); ``Ds``: ones.
        """
        init.uniform_(self.x_proj_weight, -(self.d_inner**-0.5), self.d_inner**-0.5)
        dt_std = self.dt_rank**-0.5 * self.dt_scale
        if self.dt_init == "constant":
            init.constant_(self.dt_projs_weight, dt_std)
        else:
            init.uniform_(self.dt_projs_weight, -dt_std, dt_std)
        if not getattr(self.dt_projs_bias, "_is_hf_initialized", False):
            log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
            dt = torch.exp(torch.rand(self.dt_projs_bias.shape, device="cpu") * (log_max - log_min) + log_min)
            dt = dt.clamp(min=self.dt_init_floor)
            init.copy_(self.dt_projs_bias, dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.A_logs.shape[0], -1)
        init.copy_(self.A_logs, torch.log(A))
        init.ones_(self.Ds)

    def forward(self, hidden_states):
        batch, height, width, _ = hidden_states.shape
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, H, W, E) each
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))  # (B, E, H, W)
        y = self.scan(x)  # (B, E, L) float32
        y = y.transpose(1, 2).reshape(batch, height, width, self.d_inner)
        y = self.out_norm(y.to(self.out_norm.weight.dtype))
        return self.out_proj(y * F.silu(z))

    def scan(self, x):
        """The selective scan of (B, E, H, W) features along the four directions, merged back: (B, E, H*W) float32.

        Every per-direction projection is computed once on the pixel-ordered features (a projection acts per pixel,
        so it commutes with reordering); `cross_selective_scan` walks the four directions over them.
        """
        batch, E, height, width = x.shape
        K, N, R = NUM_DIRECTIONS, self.d_state, self.dt_rank
        # (B, E, L), row-major pixels. The convolution returns channels-last memory; a contiguous copy keeps the
        # projections' results independent of where the buffers happen to lie (MKL's strided GEMM paths are not).
        u = x.flatten(2).contiguous()
        x_dbl = torch.matmul(self.x_proj_weight, u.unsqueeze(1))  # (K, R+2N, E) @ (B, 1, E, L) -> (B, K, R+2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (K, E, R) @ (B, K, R, L) -> (B, K, E, L)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return cross_selective_scan(
                u.float(),
                dts.float().reshape(batch, K * E, -1),
                -torch.exp(self.A_logs.float()),
                Bs.float(),
                Cs.float(),
                D=self.Ds.float(),
                delta_bias=self.dt_projs_bias.float().reshape(-1),
                height=height,
                width=width,
                backend=self.scan_backend,
            )
