"""What the MedMamba, VMamba and VM-UNet model classes share: the scan-backend switch, upstream's weight
initialisation, the encoder's forward pass, the classifier output, the backbone for dense-prediction heads, and a
clear error for unusable weight files."""

import contextlib
import math

import torch
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutputWithNoAttention

from .scan_backends import SCAN_BACKENDS
from .ss2d import SS2D
from .validation import check_class_labels, check_pixel_values
from .vss_layers import PatchEmbed2D, VSSEncoder


class SSMPreTrainedMixin:
    """Mixed into the ``*PreTrainedModel`` classes (before `transformers.PreTrainedModel`).

    The scan backend has one home, ``config.scan_backend``: every SS2D of the model reads it at each call (see
    `hf_medmamba.selective_scan` for how ``"auto"`` resolves). `set_scan_backend` changes it, `scan_backend_context`
    changes it for a ``with`` block.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # forward() takes **kwargs for API compatibility, not loss kwargs: the Trainer must normalise the loss itself
    accepts_loss_kwargs = False
    _no_split_modules = ["VSSBlock", "MedMambaBlock"]
    kaiming_normal_convs = False  # MedMamba re-initialises every Conv2d with kaiming-normal (see `init_vss_weights`)

    def _init_weights(self, module):
        init_vss_weights(module, self.config.initializer_range, kaiming_normal_convs=self.kaiming_normal_convs)

    def set_scan_backend(self, backend):
        """Run every SS2D of the model on ``backend`` from now on (``config.scan_backend``); returns the model."""
        if backend not in SCAN_BACKENDS:
            raise ValueError(f"Unknown scan backend {backend!r}; choose one of {', '.join(SCAN_BACKENDS)}.")
        self.config.scan_backend = backend
        return self

    @contextlib.contextmanager
    def scan_backend_context(self, backend):
        """``with model.scan_backend_context("export"):`` runs the block on ``backend``, then restores the previous
        setting (also on error)."""
        previous = self.config.scan_backend
        self.set_scan_backend(backend)
        try:
            yield self
        finally:
            self.config.scan_backend = previous

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As transformers', with a clear error for a corrupt or truncated ``model.safetensors``."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            raise OSError(
                f"Could not read the weights of {str(pretrained_model_name_or_path)!r}: {err}. The safetensors file is "
                "corrupt or truncated (an interrupted download or copy, or not a safetensors file); download or "
                "convert the model again."
            ) from err


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


def channels_first(states):
    """Channels-last activations (B, H, W, C) -> a tuple of channels-first (B, C, H, W) hidden states."""
    return tuple(h.permute(0, 3, 1, 2) for h in states)


def encode(model, pixel_values, model_name):
    """The encoder pass of MedMamba's and VMamba's ``patch_embed`` and ``layers`` on checked ``pixel_values``.

    Returns the patch embedding and, per stage, the output before and after its patch merging, all channels-last.
    """
    multiple = model.config.size_multiple
    check_pixel_values(pixel_values, model.config.num_channels, model_name, multiple=multiple, min_size=multiple)
    embeddings = model.patch_embed(pixel_values.to(model.patch_embed.proj.weight.dtype))  # (B, H/4, W/4, C0)
    stage_outputs, merged_outputs = model.layers(embeddings)
    return embeddings, stage_outputs, merged_outputs


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


class SSMBackboneMixin(BackboneMixin):
    """transformers' `BackboneMixin` for MedMamba and VMamba (mixed in before their ``*PreTrainedModel``), for
    dense-prediction heads such as `UperNetForSemanticSegmentation`.

    The backbone holds the base model's ``patch_embed`` and ``layers`` under the same parameter paths, so a base
    model's or classifier's folder loads into it (the classifier's ``head`` and VMamba's final ``norm`` are left
    out). Its stages, ``config.stage_names``: ``stem`` (the patch embedding) and ``stage1`` .. ``stage4``, each
    stage's output *before* its patch merging, at strides 4, 8, 16 and 32 as in transformers' Swin and ConvNeXt
    backbones. ``config.out_features`` picks the feature maps, channels-first (B, C, H, W) and without extra norms.
    Subclasses set ``block_class``.
    """

    block_class = None
    has_attentions = False
    _auto_class = "AutoBackbone"
    _keys_to_ignore_on_load_unexpected = [r"^head\."]  # a classifier's head: not part of the backbone

    def __init__(self, config):
        super().__init__(config)
        self.patch_embed = PatchEmbed2D(config.patch_size, config.num_channels, config.dims[0], config.layer_norm_eps)
        self.layers = VSSEncoder(config, self.block_class)
        self.num_features = [config.dims[0], *config.dims]
        self.post_init()

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""
        Returns a `BackboneOutput`: ``feature_maps``, one (batch, C, H, W) tensor per entry of ``out_features``, and
        with ``output_hidden_states`` the stem and every stage output (before merging), all channels-first.
        """
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        embeddings, stage_outputs, _ = encode(self, pixel_values, type(self).__name__)
        hidden_states = channels_first([embeddings, *stage_outputs])
        feature_maps = tuple(h for name, h in zip(self.stage_names, hidden_states) if name in self.out_features)
        output = BackboneOutput(
            feature_maps=feature_maps, hidden_states=hidden_states if output_hidden_states else None
        )
        return output if return_dict else output.to_tuple()
