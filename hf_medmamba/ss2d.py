"""SS2D, the four-direction 2-D selective scan shared by MedMamba, VMamba (v0) and VM-UNet (upstream ``SS2D``)."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .scan_directions import NUM_DIRECTIONS
from .selective_scan import cross_selective_scan


def resolve_dt_rank(dt_rank, d_model):
    """``"auto"`` means ceil(d_model / 16), as upstream."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


class SS2D(nn.Module):
    """2-D selective scan over four directions, with upstream's parameter names and shapes.

    Input and output are channels-last ``(batch, height, width, d_model)``. The scan and the merge of the four
    directions run in float32 whatever the input dtype or autocast state.

    Args:
        config: a MedMamba / VMamba / VM-UNet configuration. SS2D reads its SSM settings (``d_state``, ``d_conv``,
            ``expand``, ``dt_rank``, the step-size initialisation ``dt_*``, ``layer_norm_eps``) when it is built, and
            ``config.scan_backend`` at every call (the model's one source of truth for the backend).
        d_model: width ``D`` of the input and output. Inner width ``E = expand * D``; ``dt_rank`` ``"auto"`` means
            ceil(D / 16). The depthwise convolution has a bias, ``in_proj`` and ``out_proj`` have none (upstream).
    """

    def __init__(self, config, d_model):
        super().__init__()
        if config.dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {config.dt_init!r}.")
        self.config = config
        self.d_model = d_model
        self.d_state = config.d_state
        self.d_inner = config.expand * d_model
        self.dt_rank = resolve_dt_rank(config.dt_rank, d_model)
        E, K, N, R = self.d_inner, NUM_DIRECTIONS, self.d_state, self.dt_rank
        d_conv = config.d_conv

        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv2d = nn.Conv2d(E, E, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=E, bias=True)
        # Four stacked projections, one per direction: x -> (dt, B, C) and dt -> E channels.
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, E))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, E, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, E))
        self.A_logs = nn.Parameter(torch.empty(K * E, N))  # row k * E + c
        self.Ds = nn.Parameter(torch.empty(K * E))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.out_proj = nn.Linear(E, d_model, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """Upstream's special initialisation of the bare parameters.

        ``x_proj_weight``: U(±1/sqrt(E)) (PyTorch's Linear default); ``dt_projs_weight``: U(±dt_scale / sqrt(R)) or the
        constant dt_scale / sqrt(R); ``dt_projs_bias``: inverse softplus of dt = exp(U(log dt_min, log dt_max)),
        floored at dt_init_floor; ``A_logs``: log(1..N) in every row (S4D-real); ``Ds``: ones.
        """
        config = self.config
        init.uniform_(self.x_proj_weight, -(self.d_inner**-0.5), self.d_inner**-0.5)
        dt_std = self.dt_rank**-0.5 * config.dt_scale
        if config.dt_init == "constant":
            init.constant_(self.dt_projs_weight, dt_std)
        else:
            init.uniform_(self.dt_projs_weight, -dt_std, dt_std)
        if not getattr(self.dt_projs_bias, "_is_hf_initialized", False):
            log_min, log_max = math.log(config.dt_min), math.log(config.dt_max)
            dt = torch.exp(torch.rand(self.dt_projs_bias.shape, device="cpu") * (log_max - log_min) + log_min)
            dt = dt.clamp(min=config.dt_init_floor)
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
        so it commutes with reordering); `cross_selective_scan` walks the four directions over them, on the backend
        that ``config.scan_backend`` resolves to for these tensors.
        """
        batch, E, height, width = x.shape
        K, N, R = NUM_DIRECTIONS, self.d_state, self.dt_rank
        # (B, E, L), row-major pixels. The convolution returns channels-last memory; a contiguous copy keeps the
        # projections' results independent of where the buffers happen to lie (MKL's strided GEMM paths are not).
        u = x.flatten(2).contiguous()
        x_dbl = torch.matmul(self.x_proj_weight, u.unsqueeze(1))  # (K, R+2N, E) @ (B, 1, E, L) -> (B, K, R+2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (K, E, R) @ (B, K, R, L) -> (B, K, E, L)
        return cross_selective_scan(
            u,
            dts.reshape(batch, K * E, -1),
            -torch.exp(self.A_logs.float()),  # upstream: A = -exp(A_logs) in float32
            Bs,
            Cs,
            D=self.Ds,
            delta_bias=self.dt_projs_bias.reshape(-1),
            height=height,
            width=width,
            backend=self.config.scan_backend,
        )
