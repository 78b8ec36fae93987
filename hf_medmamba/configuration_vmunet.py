"""VM-UNet configuration."""

from .configuration_ssm import SS2DModelConfig, check_stages


BINARY_LABELS = {0: "background", 1: "lesion"}
SYNAPSE_LABELS = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "aorta",
    8: "pancreas",
}

VMUNET_PRESETS = {
    # The configuration the paper trained (ISIC 2017/2018): 27,427,561 parameters with the one-channel sigmoid head.
    "vmunet-paper": {
        "depths": [2, 2, 2, 2],
        "depths_decoder": [2, 2, 2, 1],
        "id2label": BINARY_LABELS,
        "sigmoid_head": True,
    },
    # Upstream VMUNet class defaults.
    "vmunet-default": {
        "depths": [2, 2, 9, 2],
        "depths_decoder": [2, 9, 2, 2],
        "id2label": BINARY_LABELS,
        "sigmoid_head": True,
    },
    # The paper's Synapse multi-organ setting: 9 classes (background + 8 organs), gray CT slices.
    "vmunet-synapse": {
        "depths": [2, 2, 2, 2],
        "depths_decoder": [2, 2, 2, 1],
        "id2label": SYNAPSE_LABELS,
        "num_channels": 1,
    },
}

VMUNET_AUTO_MAP = {
    "AutoConfig": "configuration_vmunet.VMUNetConfig",
    "AutoModel": "modeling_vmunet.VMUNetModel",
    "AutoModelForSemanticSegmentation": "modeling_vmunet.VMUNetForSegmentation",
}


class VMUNetConfig(SS2DModelConfig):
    r"""
    Configuration of a [`VMUNetModel`] / [`VMUNetForSegmentation`] (Ruan et al., 2024): a U-shaped network of VSS
    blocks whose encoder is VMamba v0 (see [`VMambaConfig`]). [`VMUNetConfig.from_preset`] gives ``"vmunet-paper"``
    (encoder [2, 2, 2, 2], decoder [2, 2, 2, 1], binary, as trained on ISIC), ``"vmunet-default"`` (the upstream class
    defaults [2, 2, 9, 2] / [2, 9, 2, 2], binary) and ``"vmunet-synapse"`` (paper depths, 9 classes, 1 channel).

    Args:
        num_channels (`int`, defaults to 3):
            Input channels, 1 or 3. The patch embedding is always 3-channel: a 1-channel input is repeated to 3
            channels, as upstream.
        patch_size (`int`, defaults to 4): Side of the stem's patches.
        depths (`list[int]`, defaults to `[2, 2, 9, 2]`): VSS blocks per encoder stage.
        depths_decoder (`list[int]`, defaults to `[2, 9, 2, 2]`): VSS blocks per decoder stage, deepest first.
        dims (`int` or `list[int]`, defaults to 96): Encoder widths; the decoder uses them in reverse.
        d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor:
            SS2D settings, as in [`MedMambaConfig`].
        drop_path_rate (`float`, defaults to 0.2): Stochastic depth (decoder rates in reverse order, as upstream).
        layer_norm_eps (`float`, defaults to 1e-5), initializer_range (`float`, defaults to 0.02).
        scan_backend (`str`, defaults to `"auto"`): Selective-scan backend (see [`MedMambaConfig`]).
        id2label / num_labels:
            Classes of the segmentation, background included. Binary segmentation is
            `id2label={0: "background", 1: "lesion"}` with `sigmoid_head=True`.
        sigmoid_head (`bool`, defaults to `False`):
            Upstream's binary head: one output channel, sigmoid, BCE + Dice. Needs exactly two labels. Without it the
            head has `num_labels` channels, softmax, CE + Dice.
        bce_weight (`float`, defaults to 1.0), ce_weight (`float`, defaults to 1.0), dice_weight (`float`, defaults
        to 1.0):
            Loss weights: `bce_weight * BCE + dice_weight * Dice` (binary) or `ce_weight * CE + dice_weight * Dice`.
        semantic_loss_ignore_index (`int`, defaults to 255):
            Label of unlabelled pixels, left out of both loss terms.

    Input sizes: any height and width of at least 32. Sizes that are not multiples of 32 are zero-padded at the
    bottom and right inside the model and the logits are cropped back, so they always match the input size.
    """

    model_type = "vmunet"
    _auto_class = "AutoConfig"
    presets = VMUNET_PRESETS
    default_auto_map = VMUNET_AUTO_MAP

    def __init__(
        self,
        depths=(2, 2, 9, 2),
        depths_decoder=(2, 9, 2, 2),
        dims=96,
        drop_path_rate=0.2,
        sigmoid_head=False,
        bce_weight=1.0,
        ce_weight=1.0,
        dice_weight=1.0,
        semantic_loss_ignore_index=255,
        **kwargs,
    ):
        self.depths_decoder = list(depths_decoder)
        self.sigmoid_head = sigmoid_head
        self.bce_weight = bce_weight
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        super().__init__(depths=depths, dims=dims, drop_path_rate=drop_path_rate, **kwargs)
        check_stages(self.depths_decoder, self.dims, "VMUNetConfig", names=("depths_decoder", "dims"))
        if self.num_channels not in (1, 3):
            raise ValueError(
                f"VMUNetConfig: num_channels must be 1 or 3 (the patch embedding is 3-channel and 1-channel inputs "
                f"are repeated), got {self.num_channels}."
            )
        if self.dims[0] % self.patch_size:
            raise ValueError(
                f"VMUNetConfig: dims[0] must be divisible by patch_size (the final expansion back to full resolution "
                f"splits the channels), got dims[0]={self.dims[0]}, patch_size={self.patch_size}."
            )
        if self.num_labels < 2:
            raise ValueError(
                f"VMUNetConfig: num_labels={self.num_labels}. Labels include the background, so binary segmentation "
                "has two: use id2label={0: 'background', 1: 'lesion'} with sigmoid_head=True (upstream's one-channel "
                "sigmoid head) or without it (a two-channel softmax head)."
            )
        if sigmoid_head and self.num_labels != 2:
            raise ValueError(
                f"VMUNetConfig: sigmoid_head=True is the binary head and needs exactly 2 labels, got {self.num_labels}."
            )

    @property
    def dims_decoder(self):
        return self.dims[::-1]

    @property
    def num_outputs(self):
        """Channels of the logits: 1 with the sigmoid head, else `num_labels`."""
        return 1 if self.sigmoid_head else self.num_labels
