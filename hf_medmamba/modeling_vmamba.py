"""VMamba v0 (Liu et al., 2024, "VMamba: Visual State Space Model", commit 0ec6c27) for transformers.

The encoder (`VMambaEncoderMixin`) is shared with VM-UNet. Parameter names below ``vmamba.`` equal the VMamba
checkpoint's (``patch_embed``, ``layers.{i}.blocks.{j}``, ``layers.{i}.downsample``, ``norm``) and the classifier
is ``head`` (`hf_medmamba.convert.VMAMBA_PREFIXES`).
"""

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from .configuration_vmamba import VMambaConfig
from .modeling_common import SSMPreTrainedMixin
from .ss2d import SS2D
from .validation import check_pixel_values
from .vss_layers import PatchEmbed2D, PatchMerging2D, VSSBlock, VSSStage, classifier_output, stochastic_depth_rates


@torch.no_grad()
def init_vmamba_weights(module, initializer_range):
    """Upstream VMamba / VM-UNet: Linear trunc-normal with zero bias, LayerNorm 1/0, convolutions at PyTorch's
    default (kaiming-uniform, a = sqrt(5)), SS2D's special init."""
    if isinstance(module, nn.Linear):
        init.trunc_normal_(module.weight, std=initializer_range)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
            init.uniform_(module.bias, -(fan_in**-0.5), fan_in**-0.5)
    elif isinstance(module, SS2D):
        module.reset_ssm_parameters()


class VMambaEncoderMixin:
    """Patch embedding and the VSS stages of VMamba v0 (upstream ``VSSM`` without ``norm`` / ``head``)."""

    def build_encoder(self, config, in_channels):
        dims = config.dims
        self.patch_embed = PatchEmbed2D(config.patch_size, in_channels, dims[0], config.layer_norm_eps)
        rates = stochastic_depth_rates(config.drop_path_rate, config.depths)
        self.layers = nn.ModuleList(
            VSSStage(
                [VSSBlock(config, dims[i], rate) for rate in rates[i]],
                PatchMerging2D(dims[i], config.layer_norm_eps) if i < len(dims) - 1 else None,
            )
            for i in range(len(dims))
        )

    def encode(self, pixel_values):
        """Channels-last outputs of the patch embedding and of every stage (after its merging, as upstream)."""
        hidden_states = self.patch_embed(pixel_values.to(self.patch_embed.proj.weight.dtype))
        outputs = [hidden_states]
        for stage in self.layers:
            hidden_states = stage(hidden_states)
            outputs.append(hidden_states)
        return outputs

    def input_multiple(self):
        return self.config.patch_size * 2 ** (len(self.config.depths) - 1)


class VMambaPreTrainedModel(SSMPreTrainedMixin, PreTrainedModel):
    config_class = VMambaConfig
    config: VMambaConfig
    base_model_prefix = "vmamba"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VSSBlock"]

    def _init_weights(self, module):
        init_vmamba_weights(module, self.config.initializer_range)


class VMambaModel(VMambaEncoderMixin, VMambaPreTrainedModel):
    """VMamba v0 backbone: the encoder, the final LayerNorm, global average pooling."""

    _auto_class = "AutoModel"

    def __init__(self, config):
        super().__init__(config)
        self.build_encoder(config, config.num_channels)
        self.norm = nn.LayerNorm(config.dims[-1], eps=config.layer_norm_eps)
        self.post_init()

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""
        Returns a `BaseModelOutputWithPoolingAndNoAttention`: ``last_hidden_state`` (batch, C, H/32, W/32) after the
        final norm, ``pooler_output`` (batch, C), and with ``output_hidden_states`` the patch embedding and the four
        stage outputs (after merging), channels-first.
        """
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        multiple = self.input_multiple()
        check_pixel_values(pixel_values, self.config.num_channels, "VMamba", multiple=multiple, min_size=multiple)
        stages = self.encode(pixel_values)
        last_hidden_state = self.norm(stages[-1]).permute(0, 3, 1, 2)  # (B, C, H, W)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=last_hidden_state.mean(dim=(2, 3)),
            hidden_states=tuple(h.permute(0, 3, 1, 2) for h in stages) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class VMambaForImageClassification(VMambaPreTrainedModel):
    """VMamba v0 with its linear classifier (``head``), e.g. VMamba-S on ImageNet-1k."""

    _auto_class = "AutoModelForImageClassification"

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vmamba = VMambaModel(config)
        self.head = nn.Linear(config.dims[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(self, pixel_values=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""
        labels (`torch.Tensor`, *optional*): as in [`MedMambaForImageClassification`].
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vmamba(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.head(outputs.pooler_output)
        return classifier_output(self, logits, labels, outputs.hidden_states, return_dict)


__all__ = ["VMambaForImageClassification", "VMambaModel", "VMambaPreTrainedModel"]
