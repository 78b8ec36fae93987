"""Building blocks shared by MedMamba, VMamba (v0) and VM-UNet. Activations are channels-last (B, H, W, C).

Module and parameter names follow upstream (``proj``, ``norm``, ``reduction``, ``expand``, ``ln_1``,
``self_attention``, ``blocks``, ``downsample``, ``upsample``), so upstream state dicts load without renaming.
"""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .ss2d import SS2D


class DropPath(nn.Module):
    """Stochastic depth per sample: drops the whole residual branch with probability ``drop_prob`` in training."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states):
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.dim() - 1)
        mask = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob

    def extra_repr(self):
        return f"p={self.drop_prob}"


class PatchEmbed2D(nn.Module):
    """Non-overlapping patch embedding (upstream ``PatchEmbed2D``): conv k=s=patch, then LayerNorm, channels-last."""

    def __init__(self, patch_size, in_channels, embed_dim, layer_norm_eps=1e-5):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)

    def forward(self, pixel_values):
        return self.norm(self.proj(pixel_values).permute(0, 2, 3, 1))  # (B, C, H, W) -> (B, H/p, W/p, D)


class PatchMerging2D(nn.Module):
    """2x downsampling (upstream ``PatchMerging2D``): the four 2x2 phases side by side, LayerNorm, Linear 4C -> 2C.

    Phase order, as (row, col) offsets: (0, 0), (1, 0), (0, 1), (1, 1). Height and width must be even.
    """

    def __init__(self, dim, layer_norm_eps=1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=layer_norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, hidden_states):
        phases = [hidden_states[:, r::2, c::2] for r, c in ((0, 0), (1, 0), (0, 1), (1, 1))]
        return self.reduction(self.norm(torch.cat(phases, dim=-1)))  # (B, H/2, W/2, 2C)


class PatchExpand(nn.Module):
    """``scale``-times upsampling (upstream ``PatchExpand2D`` with scale 2, ``Final_PatchExpand2D`` with 4).

    Linear ``in_dim -> scale^2 * out_dim``, channels rearranged as (row offset, col offset, channel) with the channel
    innermost into a ``scale`` times larger grid, then LayerNorm over ``out_dim``.
    """

    def __init__(self, in_dim, out_dim, scale, layer_norm_eps=1e-5):
        super().__init__()
        self.scale, self.out_dim = scale, out_dim
        self.expand = nn.Linear(in_dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim, eps=layer_norm_eps)

    def forward(self, hidden_states):
        batch, height, width, _ = hidden_states.shape
        s = self.scale
        x = self.expand(hidden_states).view(batch, height, width, s, s, self.out_dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * s, width * s, self.out_dim)  # (B, sH, sW, C)
        return self.norm(x)


class VSSBlock(GradientCheckpointingLayer):
    """Visual state-space block (upstream ``VSSBlock``): ``x + DropPath(SS2D(LayerNorm(x)))``."""

    def __init__(self, config, dim, drop_path=0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.self_attention = SS2D(config, dim)  # upstream's name for the SS2D module
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden_states):
        return hidden_states + self.drop_path(self.self_attention(self.ln_1(hidden_states)))


class VSSStage(nn.Module):
    """One encoder stage (upstream ``VSSLayer``): its blocks, then an optional 2x ``downsample``.

    Returns the stage's output before its downsampling (the stride-4/8/16/32 features of a backbone) and after it
    (what the next stage reads; upstream's ``layers.{i}`` output, VM-UNet's skip connections).
    """

    def __init__(self, blocks, downsample=None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, hidden_states):
        for block in self.blocks:
            hidden_states = block(hidden_states)
        merged = hidden_states if self.downsample is None else self.downsample(hidden_states)
        return hidden_states, merged


class VSSEncoder(nn.ModuleList):
    """The stages of MedMamba, VMamba and VM-UNet's encoder (upstream ``layers``; a ModuleList, so parameter paths
    stay ``layers.{i}``): stage ``i`` holds ``depths[i]`` blocks of width ``dims[i]`` and, but for the last, a 2x patch
    merging. Stochastic depth rises linearly over all blocks.

    ``forward`` returns two lists, one entry per stage: the outputs before and after the stage's merging.
    """

    def __init__(self, config, block_class):
        dims = config.dims
        rates = stochastic_depth_rates(config.drop_path_rate, config.depths)
        super().__init__(
            VSSStage(
                [block_class(config, dims[i], rate) for rate in rates[i]],
                PatchMerging2D(dims[i], config.layer_norm_eps) if i < len(dims) - 1 else None,
            )
            for i in range(len(dims))
        )

    def __getitem__(self, index):
        """A slice is a plain ``nn.ModuleList`` of those stages (this class is built from a config, not a list)."""
        if isinstance(index, slice):
            return nn.ModuleList(list(self._modules.values())[index])
        return super().__getitem__(index)

    def forward(self, hidden_states):
        stage_outputs, merged_outputs = [], []
        for stage in self:
            stage_output, hidden_states = stage(hidden_states)
            stage_outputs.append(stage_output)
            merged_outputs.append(hidden_states)
        return stage_outputs, merged_outputs


def stochastic_depth_rates(rate, depths, reverse=False):
    """Per-stage lists of drop-path rates, linear in the global block index from 0 to ``rate`` (upstream)."""
    rates = torch.linspace(0, rate, sum(depths), device="cpu").tolist()
    if reverse:
        rates = rates[::-1]
    out, start = [], 0
    for depth in depths:
        out.append(rates[start : start + depth])
        start += depth
    return out
