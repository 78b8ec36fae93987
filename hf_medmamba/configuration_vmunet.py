"""VM-UNet configuration."""

from transformers import PretrainedConfig

from .configuration_ssm import check_labels, check_ssm_settings, check_stages, preset_kwargs
from .vss_layers import stage_widths


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


class VMUNetConfig(PretrainedConfig):
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

    def __init__(
        self,
        num_channels=3,
        patch_size=4,
        depths=(2, 2, 9, 2),
        depths_decoder=(2, 9, 2, 2),
        dims=96,
        d_state=16,
        d_conv=3,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        dt_init="random",
        dt_scale=1.0,
        dt_init_floor=1e-4,
        drop_path_rate=0.2,
        layer_norm_eps=1e-5,
        initializer_range=0.02,
        scan_backend="auto",
        sigmoid_head=False,
        bce_weight=1.0,
        ce_weight=1.0,
        dice_weight=1.0,
        semantic_loss_ignore_index=255,
        **kwargs,
    ):
        check_labels(kwargs, "VMUNetConfig")
        kwargs.setdefault("auto_map", dict(VMUNET_AUTO_MAP))
        depths, depths_decoder = list(depths), list(depths_decoder)
        dims = stage_widths(dims, len(depths))
        check_stages(depths, dims, "VMUNetConfig")
        check_stages(depths_decoder, dims, "VMUNetConfig", names=("depths_decoder", "dims"))
        if num_channels not in (1, 3):
            raise ValueError(
                f"VMUNetConfig: num_channels must be 1 or 3 (the patch embedding is 3-channel and 1-channel inputs "
                f"are repeated), got {num_channels}."
            )
        if dims[0] % patch_size:
            raise ValueError(
                f"VMUNetConfig: dims[0] must be divisible by patch_size (the final expansion back to full resolution "
                f"splits the channels), got dims[0]={dims[0]}, patch_size={patch_size}."
            )
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.depths = depths
        self.depths_decoder = depths_decoder
        self.dims = dims
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.dt_rank = dt_rank
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init = dt_init
        self.dt_scale = dt_scale
        self.dt_init_floor = dt_init_floor
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.scan_backend = scan_backend
        self.sigmoid_head = sigmoid_head
        self.bce_weight = bce_weight
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        check_ssm_settings(self, "VMUNetConfig")
        super().__init__(**kwargs)
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

    @classmethod
    def from_preset(cls, name, **kwargs):
        """``"vmunet-paper"``, ``"vmunet-default"`` or ``"vmunet-synapse"``; ``kwargs`` override."""
        return cls(**preset_kwargs(VMUNET_PRESETS, name, kwargs, cls.__name__))

    @property
    def dims_decoder(self):
        return self.dims[::-1]

    @property
    def num_outputs(self):
        """Channels of the logits: 1 with the sigmoid head, else `num_labels`."""
        return 1 if self.sigmoid_head else self.num_labels
