"""MedMamba configuration."""

from .configuration_ssm import SS2DBackboneConfig


MEDMAMBA_PRESETS = {
    "medmamba-t": {"depths": [2, 2, 4, 2], "dims": [96, 192, 384, 768]},
    "medmamba-s": {"depths": [2, 2, 8, 2], "dims": [96, 192, 384, 768]},
    "medmamba-b": {"depths": [2, 2, 12, 2], "dims": [128, 256, 512, 1024]},
}


# How a saved folder's config.json names our classes for `trust_remote_code` loading (all Auto classes, not only the
# one `save_pretrained` was called through). The image processor's entry lives in preprocessor_config.json.
MEDMAMBA_AUTO_MAP = {
    "AutoConfig": "configuration_medmamba.MedMambaConfig",
    "AutoModel": "modeling_medmamba.MedMambaModel",
    "AutoModelForImageClassification": "modeling_medmamba.MedMambaForImageClassification",
    "AutoBackbone": "modeling_medmamba.MedMambaBackbone",
}


class MedMambaConfig(SS2DBackboneConfig):
    r"""
    Configuration of a [`MedMambaModel`] / [`MedMambaForImageClassification`] / [`MedMambaBackbone`] (Yue & Li,
    2024). The defaults give MedMamba-T; [`MedMambaConfig.from_preset`] gives the upstream variants ``"medmamba-t"``,
    ``"medmamba-s"`` and ``"medmamba-b"``.

    Args:
        num_channels (`int`, defaults to 3):
            Channels of the input images (1 for gray, 3 for RGB).
        patch_size (`int`, defaults to 4):
            Side of the non-overlapping patches of the stem.
        depths (`list[int]`, defaults to `[2, 2, 4, 2]`):
            Number of Conv-SSM blocks in each stage.
        dims (`int` or `list[int]`, defaults to `[96, 192, 384, 768]`):
            Width of each stage; an int `d` means `[d, 2d, 4d, 8d]`. Widths must be even: each block splits its
            channels in half between the convolution and the SS2D branch.
        d_state (`int`, defaults to 16):
            State size N of the selective scan.
        d_conv (`int`, defaults to 3):
            Kernel size of SS2D's depthwise convolution.
        expand (`int`, defaults to 2):
            SS2D's inner width is `expand` times its input width.
        dt_rank (`int` or `"auto"`, defaults to `"auto"`):
            Rank of the step-size projection; `"auto"` is ceil(width / 16).
        dt_min (`float`, defaults to 0.001), dt_max (`float`, defaults to 0.1), dt_init (`str`, defaults to
        `"random"`), dt_scale (`float`, defaults to 1.0), dt_init_floor (`float`, defaults to 1e-4):
            Initialisation of the step sizes (see `SS2D.reset_ssm_parameters`).
        drop_path_rate (`float`, defaults to 0.1):
            Stochastic depth, rising linearly over all blocks from 0 to this rate (upstream default 0.1).
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of every LayerNorm.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the truncated normal initialisation of the Linear layers.
        scan_backend (`str`, defaults to `"auto"`):
            Selective-scan backend: `"auto"`, `"cpu_kernel"`, `"chunked"`, `"mamba_ssm"` or `"reference"`.
            `"auto"` chooses per call from the device (and follows the `HF_MEDMAMBA_SCAN_BACKEND` variable).
        num_labels / id2label / label2id / problem_type:
            As in every transformers classifier. `problem_type` selects the loss: `"single_label_classification"`
            (cross-entropy, upstream), `"multi_label_classification"` (BCE with logits) or `"regression"` (MSE).
        out_features (`list[str]`, *optional*), out_indices (`list[int]`, *optional*):
            For [`MedMambaBackbone`] (`AutoBackbone`): the feature maps it returns, by name from `stage_names`
            (`"stem"`, the patch embedding, then `"stage1"` .. `"stage4"`, each stage before its downsampling) or
            by index into it. Defaults to the last stage.

    Input sizes: height and width must be multiples of 32 (the four stages downsample by 4, 2, 2, 2) and at least
    32. Other sizes raise an error that says so; the image processor resizes to 224 x 224 by default.

    Example:

    ```python
    >>> from hf_medmamba import MedMambaConfig, MedMambaForImageClassification
    >>> config = MedMambaConfig.from_preset("medmamba-s", id2label={0: "benign", 1: "malignant", 2: "normal"})
    >>> model = MedMambaForImageClassification(config)
    ```"""

    model_type = "medmamba"
    attribute_map = {"hidden_sizes": "dims"}
    _auto_class = "AutoConfig"
    presets = MEDMAMBA_PRESETS
    default_auto_map = MEDMAMBA_AUTO_MAP

    def __init__(self, depths=(2, 2, 4, 2), dims=(96, 192, 384, 768), drop_path_rate=0.1, **kwargs):
        super().__init__(depths=depths, dims=dims, drop_path_rate=drop_path_rate, **kwargs)
        if any(d % 2 for d in self.dims):
            raise ValueError(
                f"MedMambaConfig: every width in dims must be even (each block splits its channels in half), "
                f"got {self.dims}."
            )

    @property
    def num_stages(self):
        return len(self.depths)
