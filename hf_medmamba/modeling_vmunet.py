"""VM-UNet (Ruan et al., 2024, "VM-UNet: Vision Mamba UNet for Medical Image Segmentation") for transformers.

Parameter names below ``vmunet.`` equal upstream ``VMUNet.vmunet``'s (``patch_embed``, ``layers``, ``layers_up``,
``final_up``); upstream's ``vmunet.final_conv`` is the head ``final_conv``
(`hf_medmamba.tools.key_maps.VMUNET_PREFIXES`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils import ModelOutput

from .configuration_vmunet import VMUNetConfig
from .losses import bce_dice_loss, ce_dice_loss
from .modeling_common import SSMPreTrainedMixin, channels_first
from .validation import check_pixel_values, check_segmentation_labels
from .vss_layers import PatchEmbed2D, PatchExpand, VSSBlock, VSSEncoder, stochastic_depth_rates


@dataclass
class VMUNetModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, dims[0] / 4, height, width)`):
            Full-resolution decoder features (after the final x patch_size expansion), the input of the 1x1 head.
        encoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Patch embedding and encoder stage outputs (after merging), channels-first; with `output_hidden_states`.
        decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Decoder stage outputs, deepest first, channels-first; with `output_hidden_states`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None


class VMUNetDecoderStage(nn.Module):
    """One decoder stage (upstream ``VSSLayer_up``): an optional x2 ``upsample`` first, then its VSS blocks."""

    def __init__(self, blocks, upsample=None):
        super().__init__()
        self.upsample = upsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, hidden_states):
        if self.upsample is not None:
            hidden_states = self.upsample(hidden_states)
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return hidden_states


class VMUNetPreTrainedModel(SSMPreTrainedMixin, PreTrainedModel):
    config_class = VMUNetConfig
    config: VMUNetConfig
    base_model_prefix = "vmunet"


class VMUNetModel(VMUNetPreTrainedModel):
    """VM-UNet without its 1x1 head: VMamba encoder, VSS decoder with additive skips, final x4 patch expansion.

    Data flow (e_i channels-last): e0 = patch_embed(x); e_{i+1} = layers.i(e_i); d0 = layers_up.0(e4);
    d_i = layers_up.i(d_{i-1} + e_{4-i}) for i = 1..3 (skips from the encoder outputs after merging, added at the
    decoder stage inputs; e0 is not used); features = final_up(d3).
    """

    _auto_class = "AutoModel"

    def __init__(self, config):
        super().__init__(config)
        self.patch_embed = PatchEmbed2D(config.patch_size, 3, config.dims[0], config.layer_norm_eps)  # always RGB
        self.layers = VSSEncoder(config, VSSBlock)
        dims_decoder = config.dims_decoder
        rates = stochastic_depth_rates(config.drop_path_rate, config.depths_decoder, reverse=True)
        self.layers_up = nn.ModuleList(
            VMUNetDecoderStage(
                [VSSBlock(config, dims_decoder[i], rate) for rate in rates[i]],
                PatchExpand(2 * dims_decoder[i], dims_decoder[i], 2, config.layer_norm_eps) if i > 0 else None,
            )
            for i in range(len(dims_decoder))
        )
        scale = config.patch_size
        self.final_up = PatchExpand(dims_decoder[-1], dims_decoder[-1] // scale, scale, config.layer_norm_eps)
        self.post_init()

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        check_pixel_values(pixel_values, config.num_channels, "VM-UNet", multiple=None, min_size=32)
        height, width = pixel_values.shape[-2:]
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.repeat(1, 3, 1, 1)  # as upstream: the patch embedding is 3-channel
        pad_h, pad_w = -height % config.size_multiple, -width % config.size_multiple
        if pad_h or pad_w:
            pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))  # bottom and right; cropped off below

        embeddings = self.patch_embed(pixel_values.to(self.patch_embed.proj.weight.dtype))  # e0 (B, H/4, W/4, C0)
        _, skips = self.layers(embeddings)  # e1 .. e4, each stage after its patch merging
        hidden_states = skips[-1]
        decoder_states = []
        for i, stage in enumerate(self.layers_up):  # deepest first; skips added at the inputs of stages 1..3
            if i > 0:
                hidden_states = hidden_states + skips[-1 - i]
            hidden_states = stage(hidden_states)
            decoder_states.append(hidden_states)
        features = self.final_up(hidden_states)[:, :height, :width].permute(0, 3, 1, 2)  # (B, C0 / 4, H, W)

        output = VMUNetModelOutput(
            last_hidden_state=features,
            encoder_hidden_states=channels_first([embeddings, *skips]) if output_hidden_states else None,
            decoder_hidden_states=channels_first(decoder_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class VMUNetForSegmentation(VMUNetPreTrainedModel):
    """VM-UNet with its 1x1 convolution head (``final_conv``), returning full-resolution logits.

    With ``config.sigmoid_head`` the logits have one channel (probability of the foreground = sigmoid), otherwise
    ``num_labels`` channels (softmax). Given ``labels``, the loss is upstream's BCE + Dice or CE + Dice.
    """

    _auto_class = "AutoModelForSemanticSegmentation"

    def __init__(self, config):
        super().__init__(config)
        self.vmunet = VMUNetModel(config)
        self.final_conv = nn.Conv2d(config.dims[0] // config.patch_size, config.num_outputs, kernel_size=1)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""
        labels (`torch.LongTensor` of shape `(batch, height, width)`, *optional*):
            Class indices 0..num_labels-1 per pixel (binary: 0 background, 1 foreground), or
            `config.semantic_loss_ignore_index` for unlabelled pixels. `VMUNetImageProcessor` makes them from masks
            (it turns {0, 255} masks into {0, 1}).
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vmunet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.final_conv(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.compute_loss(logits, labels)
        hidden_states = None
        if outputs.encoder_hidden_states is not None:
            hidden_states = outputs.encoder_hidden_states + outputs.decoder_hidden_states
        output = SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states)
        return output if return_dict else output.to_tuple()

    def compute_loss(self, logits, labels):
        """Upstream's loss for this head, computed explicitly (not transformers' name-based `loss_function`)."""
        config = self.config
        check_segmentation_labels(labels, logits, config.num_labels, config.semantic_loss_ignore_index, "VM-UNet")
        labels = labels.to(logits.device)
        if config.sigmoid_head:
            return bce_dice_loss(
                logits, labels, config.semantic_loss_ignore_index, config.bce_weight, config.dice_weight
            )
        return ce_dice_loss(logits, labels, config.semantic_loss_ignore_index, config.ce_weight, config.dice_weight)


__all__ = ["VMUNetForSegmentation", "VMUNetModel", "VMUNetPreTrainedModel"]
