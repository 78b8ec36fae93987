"""VMamba (v0, "vanilla") configuration: the backbone of VM-UNet and the ImageNet classifier it was pretrained as."""

from transformers import PretrainedConfig

from .configuration_ssm import check_labels, check_ssm_settings, check_stages, preset_kwargs
from .vss_layers import stage_widths


VMAMBA_PRESETS = {
    # VMamba-S v0 (VMamba release #v0cls, "vssmsmall_dp03_ckpt_epoch_238.pth"): 44,417,416 parameters, 1000 classes
    "vmamba-s": {"depths": [2, 2, 27, 2], "dims": [96, 192, 384, 768], "drop_path_rate": 0.3, "num_labels": 1000},
}

VMAMBA_AUTO_MAP = {
    "AutoConfig": "configuration_vmamba.VMambaConfig",
    "AutoModel": "modeling_vmamba.VMambaModel",
    "AutoModelForImageClassification": "modeling_vmamba.VMambaForImageClassification",
}


class VMambaConfig(PretrainedConfig):
    r"""
    Configuration of a [`VMambaModel`] / [`VMambaForImageClassification`]: the first-generation VMamba (Liu et al.,
    2024, commit 0ec6c27), a stack of VSS blocks (LayerNorm -> SS2D -> DropPath, residual) with patch merging, a final
    LayerNorm and a pooled linear head. [`VMambaConfig.from_preset`]`("vmamba-s")` gives VMamba-S, whose ImageNet
    weights initialise VM-UNet's encoder.

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

    Height and width must be multiples of 32; the image processor resizes to 256 and centre-crops 224.
    """

    model_type = "vmamba"
    attribute_map = {"hidden_sizes": "dims"}
    _auto_class = "AutoConfig"

    def __init__(
        self,
        num_channels=3,
        patch_size=4,
        depths=(2, 2, 9, 2),
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
        **kwargs,
    ):
        check_labels(kwargs, "VMambaConfig")
        kwargs.setdefault("auto_map", dict(VMAMBA_AUTO_MAP))
        depths = list(depths)
        dims = stage_widths(dims, len(depths))
        check_stages(depths, dims, "VMambaConfig")
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.depths = depths
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
        check_ssm_settings(self, "VMambaConfig")
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name, **kwargs):
        """VMamba-S (``"vmamba-s"``); ``kwargs`` override."""
        return cls(**preset_kwargs(VMAMBA_PRESETS, name, kwargs, cls.__name__))
