"""VMamba v0 (Liu et al., 2024, "VMamba: Visual State Space Model", commit 0ec6c27) for transformers.

Its encoder (`StageEncoderMixin` with `VSSBlock`s) is VM-UNet's. Parameter names below ``vmamba.`` equal the VMamba
checkpoint's (``patch_embed``, ``layers.{i}.blocks.{j}``, ``layers.{i}.downsample``, ``norm``) and the classifier
is ``head`` (`hf_medmamba.convert.VMAMBA_PREFIXES`).
"""

from torch import nn
from transformers import PreTrainedModel

from .configuration_vmamba import VMambaConfig
from .modeling_common import SSMPreTrainedMixin
from .vss_layers import StageEncoderMixin, VSSBlock, classifier_output, init_vss_weights


class VMambaPreTrainedModel(SSMPreTrainedMixin, PreTrainedModel):
    config_class = VMambaConfig
    config: VMambaConfig
    base_model_prefix = "vmamba"
    _no_split_modules = ["VSSBlock"]

    def _init_weights(self, module):
        init_vss_weights(module, self.config.initializer_range)


class VMambaModel(StageEncoderMixin, VMambaPreTrainedModel):
    """VMamba v0 backbone: the encoder, the final LayerNorm, global average pooling."""

    _auto_class = "AutoModel"

    def __init__(self, config):
        super().__init__(config)
        self.build_encoder(config, config.num_channels, VSSBlock)
        self.norm = nn.LayerNorm(config.dims[-1], eps=config.layer_norm_eps)
        self.post_init()

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""
        Returns a `BaseModelOutputWithPoolingAndNoAttention`: ``last_hidden_state`` (batch, C, H/32, W/32) after the
        final norm, ``pooler_output`` (batch, C), and with ``output_hidden_states`` the patch embedding and the four
        stage outputs (after merging), channels-first.
        """
        return self.pooled_output(pixel_values, "VMamba", self.norm, output_hidden_states, return_dict)


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
