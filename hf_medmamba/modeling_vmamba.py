"""VMamba v0 (Liu et al., 2024, "VMamba: Visual State Space Model", commit 0ec6c27) for transformers.

Its encoder (`PatchEmbed2D` and a `VSSEncoder` of `VSSBlock`s) is VM-UNet's. Parameter names below ``vmamba.``
equal the VMamba checkpoint's (``patch_embed``, ``layers.{i}.blocks.{j}``, ``layers.{i}.downsample``, ``norm``) and
the classifier is ``head`` (`hf_medmamba.tools.key_maps.VMAMBA_PREFIXES`).
"""

from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from .configuration_vmamba import VMambaConfig
from .modeling_common import SSMBackboneMixin, SSMPreTrainedMixin, channels_first, classifier_output, encode
from .vss_layers import PatchEmbed2D, VSSBlock, VSSEncoder


class VMambaPreTrainedModel(SSMPreTrainedMixin, PreTrainedModel):
    config_class = VMambaConfig
    config: VMambaConfig
    base_model_prefix = "vmamba"


class VMambaModel(VMambaPreTrainedModel):
    """VMamba v0 backbone: the patch embedding, the VSS stages, the final LayerNorm, global average pooling."""

    _auto_class = "AutoModel"

    def __init__(self, config):
        super().__init__(config)
        self.patch_embed = PatchEmbed2D(config.patch_size, config.num_channels, config.dims[0], config.layer_norm_eps)
        self.layers = VSSEncoder(config, VSSBlock)
        self.norm = nn.LayerNorm(config.dims[-1], eps=config.layer_norm_eps)
        self.post_init()

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""
        Returns a `BaseModelOutputWithPoolingAndNoAttention`: ``last_hidden_state`` (batch, C, H/32, W/32) after the
        final norm, ``pooler_output`` (batch, C), and with ``output_hidden_states`` the patch embedding and the four
        stage outputs (after merging), channels-first.
        """
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        embeddings, _, merged = encode(self, pixel_values, "VMamba")  # merged: each stage after its patch merging
        last_hidden_state = self.norm(merged[-1]).permute(0, 3, 1, 2)  # (B, C, H/32, W/32)
        pooled_output = last_hidden_state.mean(dim=(2, 3))

        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=channels_first([embeddings, *merged]) if output_hidden_states else None,
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


class VMambaBackbone(SSMBackboneMixin, VMambaPreTrainedModel):
    """VMamba v0's patch embedding and VSS stages (not its final norm) as a transformers backbone (`AutoBackbone`):
    the stride-4 stem and the four stage outputs before their downsampling, channels-first (see `SSMBackboneMixin`).

    VMamba-S weights converted by ``conversion/convert_vmamba.py classifier`` load into it. Under
    `UperNetForSemanticSegmentation` it is the architecture of VMamba's segmentation setting, without upstream's extra
    per-stage output norms (README: "Backbones for dense heads").
    """

    block_class = VSSBlock
    _keys_to_ignore_on_load_unexpected = [r"^head\.", r"^(vmamba\.)?norm\."]  # the classifier's head and final norm


__all__ = ["VMambaBackbone", "VMambaForImageClassification", "VMambaModel", "VMambaPreTrainedModel"]
