"""Building blocks shared by MedMamba, VMamba (v0) and VM-UNet. Activations are channels-last (B, H, W, C).

Module and parameter names follow upstream (``proj``, ``norm``, ``reduction``, ``expand``, ``ln_1``,
``self_attention``, ``blocks``, ``downsample``, ``upsample``), so upstream state dicts load without renaming.
"""

import math

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

from .ss2d import SS2D
from .validation import check_class_labels, check_pixel_values


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


def ss2d_from_config(config, dim):
    """SS2D of width ``dim`` with the SSM settings of a MedMamba / VMamba / VM-UNet config."""
    return SS2D(
        d_model=dim,
        d_state=config.d_state,
        d_conv=config.d_conv,
        expand=config.expand,
        dt_rank=config.dt_rank,
        dt_min=config.dt_min,
        dt_max=config.dt_max,
        dt_init=config.dt_init,
        dt_scale=config.dt_scale,
        dt_init_floor=config.dt_init_floor,
        layer_norm_eps=config.layer_norm_eps,
        scan_backend=config.scan_backend,
    )


class VSSBlock(GradientCheckpointingLayer):
    """Visual state-space block (upstream ``VSSBlock``): ``x + DropPath(SS2D(LayerNorm(x)))``."""

    def __init__(self, config, dim, drop_path=0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.self_attention = ss2d_from_config(config, dim)  # upstream's name for the SS2D module
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden_states):
        return hidden_states + self.drop_path(self.self_attention(self.ln_1(hidden_states)))


class VSSStage(nn.Module):
    """One encoder stage (upstream ``VSSLayer``): its blocks, then an optional 2x ``downsample``."""

    def __init__(self, blocks, downsample=None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, hidden_states):
        for block in self.blocks:
            hidden_states = block(hidden_states)
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return hidden_states


class StageEncoderMixin:
    """The patch embedding (``patch_embed``) and the stages (``layers``) of MedMamba, VMamba and VM-UNet's encoder.

    Each stage holds blocks of one width and, but for the last, a 2x patch merging; upstream names throughout.
    """

    def build_encoder(self, config, in_channels, block_class):
        dims = config.dims
        self.patch_embed = PatchEmbed2D(config.patch_size, in_channels, dims[0], config.layer_norm_eps)
        rates = stochastic_depth_rates(config.drop_path_rate, config.depths)
        self.layers = nn.ModuleList(
            VSSStage(
                [block_class(config, dims[i], rate) for rate in rates[i]],
                PatchMerging2D(dims[i], config.layer_norm_eps) if i < len(dims) - 1 else None,
            )
            for i in range(len(dims))
        )

    def input_multiple(self):
        """Height and width must be multiples of this: the stem's stride times the three merges."""
        return self.config.patch_size * 2 ** (len(self.config.depths) - 1)

    def encode(self, pixel_values):
        """Channels-last outputs of the patch embedding and of every stage (after its merging, as upstream)."""
        hidden_states = self.patch_embed(pixel_values.to(self.patch_embed.proj.weight.dtype))
        outputs = [hidden_states]
        for stage in self.layers:
            hidden_states = stage(hidden_states)
            outputs.append(hidden_states)
        return outputs

    def pooled_output(self, pixel_values, model_name, norm=None, output_hidden_states=None, return_dict=None):
        """`BaseModelOutputWithPoolingAndNoAttention` of a classification backbone: the last stage (after ``norm``,
        if any) channels-first, its global average, and on request every stage output, channels-first."""
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        multiple = self.input_multiple()
        check_pixel_values(pixel_values, config.num_channels, model_name, multiple=multiple, min_size=multiple)
        stages = self.encode(pixel_values)
        last = stages[-1] if norm is None else norm(stages[-1])
        last = last.permute(0, 3, 1, 2)  # (B, C, H, W)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last,
            pooler_output=last.mean(dim=(2, 3)),
            hidden_states=tuple(h.permute(0, 3, 1, 2) for h in stages) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


@torch.no_grad()
def init_vss_weights(module, initializer_range, kaiming_normal_convs=False):
    """Upstream VMamba / VM-UNet / MedMamba init: Linear trunc-normal with zero bias, LayerNorm and BatchNorm 1/0
    (fresh running statistics), SS2D's special init, and convolution weights at PyTorch's default (kaiming-uniform,
    a = sqrt(5)) or, with ``kaiming_normal_convs`` (MedMamba's re-init of every Conv2d), kaiming-normal (fan_out,
    relu). Convolution biases keep PyTorch's default in both cases."""
    if isinstance(module, nn.Linear):
        init.trunc_normal_(module.weight, std=initializer_range)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        if kaiming_normal_convs:
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            bound = conv_fan_in(module) ** -0.5
            init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, nn.BatchNorm2d):
        init.ones_(module.weight)
        init.zeros_(module.bias)
        init.zeros_(module.running_mean)
        init.ones_(module.running_var)
        init.zeros_(module.num_batches_tracked)
    elif isinstance(module, SS2D):
        module.reset_ssm_parameters()


def conv_fan_in(conv):
    """PyTorch's fan-in of a convolution weight (its default bias init is uniform within +-1/sqrt(fan_in))."""
    return conv.in_channels // conv.groups * math.prod(conv.kernel_size)


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


def stage_widths(dims, num_stages):
    """``dims`` as given (a list) or, for an int ``d``, ``[d, 2d, 4d, ...]`` (upstream convention)."""
    if isinstance(dims, int):
        return [dims * 2**i for i in range(num_stages)]
    return list(dims)


def classifier_output(model, logits, labels, hidden_states, return_dict):
    """The `ImageClassifierOutputWithNoAttention` of a classifier head, with transformers' problem-type loss.

    Class-index labels are checked against ``num_labels`` first, so a wrong label map fails with a clear message.
    """
    loss = None
    if labels is not None:
        if model.config.problem_type in (None, "single_label_classification") and model.config.num_labels > 1:
            check_class_labels(labels, model.config.num_labels, type(model).__name__)
        loss = model.loss_function(labels=labels, pooled_logits=logits, config=model.config)
    output = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states)
    return output if return_dict else output.to_tuple()
