"""MedMamba (Yue & Li, 2024, "MedMamba: Vision Mamba for Medical Image Classification") for transformers.

Module and parameter names below ``medmamba.`` equal upstream ``VSSM``'s (``patch_embed``, ``layers.{i}.blocks.{j}``,
``layers.{i}.downsample``), and the classifier is ``head``, so an upstream state dict loads after a prefix change
(`hf_medmamba.tools.key_maps.MEDMAMBA_PREFIXES`).
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from .configuration_medmamba import MedMambaConfig
from .modeling_common import SSMBackboneMixin, SSMPreTrainedMixin, channels_first, classifier_output, encode
from .ss2d import SS2D
from .vss_layers import DropPath, PatchEmbed2D, VSSEncoder


class MedMambaConvBranch(nn.Sequential):
    """The convolution branch of a Conv-SSM block: BN, conv3x3, BN, ReLU, conv3x3, BN, ReLU, conv1x1, ReLU (NCHW)."""

    def __init__(self, channels):
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=1),
            nn.ReLU(),
        )


class MedMambaBlock(GradientCheckpointingLayer):
    """Conv-SSM block (upstream ``SS_Conv_SSM``).

    The channels are split in half: the left half goes through the convolution branch, the right half through
    LayerNorm -> SS2D -> DropPath. The two halves are concatenated (convolution first), interleaved by a channel
    shuffle with two groups (output channel 2j = conv[j], 2j + 1 = ssm[j]) and added to the block input.
    """

    def __init__(self, config, dim, drop_path=0.0):
        super().__init__()
        half = dim // 2
        self.ln_1 = nn.LayerNorm(half, eps=config.layer_norm_eps)
        self.self_attention = SS2D(config, half)  # upstream's name for the SS2D module
        self.drop_path = DropPath(drop_path)
        self.conv33conv33conv11 = MedMambaConvBranch(half)

    def forward(self, hidden_states):
        batch, height, width, channels = hidden_states.shape
        left, right = hidden_states.chunk(2, dim=-1)
        ssm = self.drop_path(self.self_attention(self.ln_1(right)))
        conv = self.conv33conv33conv11(left.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # NHWC -> NCHW -> NHWC
        mixed = torch.cat([conv, ssm], dim=-1).view(batch, height, width, 2, channels // 2)
        mixed = mixed.transpose(3, 4).reshape(batch, height, width, channels)  # channel shuffle, 2 groups
        return mixed + hidden_states


class MedMambaPreTrainedModel(SSMPreTrainedMixin, PreTrainedModel):
    config_class = MedMambaConfig
    config: MedMambaConfig
    base_model_prefix = "medmamba"
    kaiming_normal_convs = True  # upstream MedMamba re-initialises every Conv2d (kaiming-normal, fan_out, relu)


class MedMambaModel(MedMambaPreTrainedModel):
    """MedMamba backbone: patch embedding and the Conv-SSM stages, with global average pooling (no final norm)."""

    _auto_class = "AutoModel"

    def __init__(self, config):
        super().__init__(config)
        self.patch_embed = PatchEmbed2D(config.patch_size, config.num_channels, config.dims[0], config.layer_norm_eps)
        self.layers = VSSEncoder(config, MedMambaBlock)
        self.post_init()

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""
        Returns a `BaseModelOutputWithPoolingAndNoAttention`: ``last_hidden_state`` (batch, C, H/32, W/32),
        ``pooler_output`` (batch, C), and with ``output_hidden_states`` the patch embedding and the output of every
        stage (after its downsampling, as upstream's ``layers.{i}``), all channels-first.
        """
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        embeddings, _, merged = encode(self, pixel_values, "MedMamba")  # merged: each stage after its patch merging
        last_hidden_state = merged[-1].permute(0, 3, 1, 2)  # (B, C, H/32, W/32)
        pooled_output = last_hidden_state.mean(dim=(2, 3))  # upstream's avgpool

        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=channels_first([embeddings, *merged]) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class MedMambaForImageClassification(MedMambaPreTrainedModel):
    """MedMamba with a linear classifier (``head``) on the pooled features."""

    _auto_class = "AutoModelForImageClassification"

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.medmamba = MedMambaModel(config)
        self.head = nn.Linear(config.dims[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(self, pixel_values=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""
        labels (`torch.Tensor` of shape `(batch,)` or `(batch, num_labels)`, *optional*):
            Class indices for single-label classification, multi-hot floats for multi-label classification, or
            targets for regression (`config.problem_type` decides; it is inferred on the first call if unset).
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.medmamba(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.head(outputs.pooler_output)
        return classifier_output(self, logits, labels, outputs.hidden_states, return_dict)


class MedMambaBackbone(SSMBackboneMixin, MedMambaPreTrainedModel):
    """MedMamba's patch embedding and Conv-SSM stages as a transformers backbone (`AutoBackbone`): the stride-4 stem
    and the four stage outputs before their downsampling, channels-first (see `SSMBackboneMixin`)."""

    block_class = MedMambaBlock


__all__ = ["MedMambaBackbone", "MedMambaForImageClassification", "MedMambaModel", "MedMambaPreTrainedModel"]
