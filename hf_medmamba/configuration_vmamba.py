"""VMamba (v0, "vanilla") configuration: the backbone of VM-UNet and the ImageNet classifier it was pretrained as."""

from .configuration_ssm import SS2DBackboneConfig


VMAMBA_PRESETS = {
    # VMamba-S v0 (VMamba release #v0cls, "vssmsmall_dp03_ckpt_epoch_238.pth"): 44,417,416 parameters, 1000 classes
    "vmamba-s": {"depths": [2, 2, 27, 2], "dims": [96, 192, 384, 768], "drop_path_rate": 0.3, "num_labels": 1000},
}

VMAMBA_AUTO_MAP = {
    "AutoConfig": "configuration_vmamba.VMambaConfig",
    "AutoModel": "modeling_vmamba.VMambaModel",
    "AutoModelForImageClassification": "modeling_vmamba.VMambaForImageClassification",
    "AutoBackbone": "modeling_vmamba.VMambaBackbone",
}


class VMambaConfig(SS2DBackboneConfig):
    r"""
    Configuration of a [`VMambaModel`] / [`VMambaForImageClassification`] / [`VMambaBackbone`]: the first-generation
    VMamba (Liu et al., 2024, commit 0ec6c27), a stack of VSS blocks (LayerNorm -> SS2D -> DropPath, residual) with
    patch merging, a final LayerNorm and a pooled linear head. [`VMambaConfig.from_preset`]`("vmamba-s")` gives
    VMamba-S, whose ImageNet weights initialise VM-UNet's encoder.

    Args:
        num_channels (`int`, defaults to 3): Channels of the input images.
        patch_size (`int`, defaults to 4): Side of the stem's non-overlapping patches.
        depths (`list[int]`, defaults to `[2, 2, 9, 2]`): VSS blocks per stage.
        dims (`int` or `list[int]`, defaults to 96): Width per stage; an int `d` means `[d, 2d, 4d, 8d]`.
        d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor:
            SS2D settings, as in [`MedMambaConfig`].
        drop_path_rate (`float`, defaults to 0.2): Stochastic depth, linear over all blocks (VMamba-S: 0.3).
        layer_norm_eps (`float`, defaults to 1e-5): Epsilon of every LayerNorm.
        initializer_range (`float`, defaults to 0.02): Std of the truncated-normal init of Linear layers.
        scan_backend (`str`, defaults to `"auto"`): Selective-scan backend (see [`MedMambaConfig`]).
        out_features, out_indices: The feature maps of [`VMambaBackbone`] (see [`MedMambaConfig`]).

    Height and width must be multiples of 32; the image processor resizes to 256 and centre-crops 224.
    """

    model_type = "vmamba"
    attribute_map = {"hidden_sizes": "dims"}
    _auto_class = "AutoConfig"
    presets = VMAMBA_PRESETS
    default_auto_map = VMAMBA_AUTO_MAP

    def __init__(self, depths=(2, 2, 9, 2), dims=96, drop_path_rate=0.2, **kwargs):
        super().__init__(depths=depths, dims=dims, drop_path_rate=drop_path_rate, **kwargs)
