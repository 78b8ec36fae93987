"""What the configurations of MedMamba, VMamba and VM-UNet share: the base class and its validation.

Reading a configuration imports no layers and no scan: only transformers' `PretrainedConfig` and the backend names.
"""

from transformers import PretrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .scan_backends import SCAN_BACKENDS


def stage_widths(dims, num_stages):
    """``dims`` as given (a list) or, for an int ``d``, ``[d, 2d, 4d, ...]`` (upstream convention)."""
    if isinstance(dims, int):
        return [dims * 2**i for i in range(num_stages)]
    return list(dims)


def check_labels(kwargs, model_name):
    """Refuse a ``num_labels`` that disagrees with ``id2label`` (transformers would reset it with only a warning)."""
    id2label, num_labels = kwargs.get("id2label"), kwargs.get("num_labels")
    if id2label is not None and num_labels is not None and len(id2label) != num_labels:
        raise ValueError(
            f"{model_name}: num_labels={num_labels} disagrees with id2label, which has {len(id2label)} entries. "
            "Pass only one of them (num_labels is len(id2label) in transformers 5)."
        )


def check_stages(depths, dims, model_name, names=("depths", "dims")):
    """Depths and widths must be positive integers, one per stage."""
    if not depths or any(not isinstance(d, int) or d < 1 for d in depths):
        raise ValueError(f"{model_name}: {names[0]} must be a non-empty list of positive integers, got {depths}.")
    if len(dims) != len(depths):
        raise ValueError(
            f"{model_name}: {names[0]} has {len(depths)} stages but {names[1]} has {len(dims)} ({depths} vs {dims}); "
            "give one width per stage, or a single int d for [d, 2d, 4d, ...]."
        )
    if any(not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"{model_name}: {names[1]} must be positive integers, got {dims}.")


def check_ssm_settings(config, model_name):
    if config.scan_backend not in SCAN_BACKENDS:
        raise ValueError(
            f"{model_name}: unknown scan_backend {config.scan_backend!r}; choose one of {', '.join(SCAN_BACKENDS)}."
        )
    if not (isinstance(config.d_state, int) and config.d_state >= 1):
        raise ValueError(f"{model_name}: d_state must be a positive integer, got {config.d_state!r}.")
    if config.dt_rank != "auto" and not (isinstance(config.dt_rank, int) and config.dt_rank >= 1):
        raise ValueError(f"{model_name}: dt_rank must be 'auto' or a positive integer, got {config.dt_rank!r}.")


def preset_kwargs(presets, name, overrides, model_name):
    """A preset's settings updated with ``overrides``; labels given in ``overrides`` replace the preset's."""
    key = str(name).lower().replace("_", "-")
    if key not in presets:
        raise ValueError(f"{model_name}: unknown preset {name!r}; available presets: {', '.join(sorted(presets))}.")
    settings = dict(presets[key])
    if "id2label" in overrides or "num_labels" in overrides:
        settings.pop("num_labels", None)
        settings.pop("id2label", None)
    return {**settings, **overrides}


class SS2DModelConfig(PretrainedConfig):
    """Base of the three configurations: the patch stem, the stages, SS2D's settings and the scan backend.

    Each subclass documents every argument and sets its own defaults, ``presets`` and ``default_auto_map`` (the
    ``auto_map`` a saved folder gets, listing every Auto class of the model for ``trust_remote_code`` loading).
    """

    presets = {}
    default_auto_map = {}

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
        drop_path_rate=0.0,
        layer_norm_eps=1e-5,
        initializer_range=0.02,
        scan_backend="auto",
        **kwargs,
    ):
        name = type(self).__name__
        check_labels(kwargs, name)
        kwargs.setdefault("auto_map", dict(self.default_auto_map))
        depths = list(depths)
        dims = stage_widths(dims, len(depths))
        check_stages(depths, dims, name)
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
        check_ssm_settings(self, name)
        super().__init__(**kwargs)

    @property
    def size_multiple(self):
        """Input heights and widths are multiples of this for the encoder: the stem's stride times the merges."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

    @classmethod
    def from_preset(cls, name, **kwargs):
        """A configuration from ``cls.presets``; ``kwargs`` override the preset's settings."""
        return cls(**preset_kwargs(cls.presets, name, kwargs, cls.__name__))


class SS2DBackboneConfig(BackboneConfigMixin, SS2DModelConfig):
    """Base of the configurations whose models also serve as backbones of dense-prediction heads (``AutoBackbone``).

    Adds transformers' backbone settings: ``stage_names`` (``"stem"``, the patch embedding, then ``"stage1"`` ..
    ``"stageN"``, each stage's output before its downsampling) and ``out_features`` / ``out_indices``, which select the
    feature maps the backbone returns (by default the last stage, as in transformers' backbones).
    """

    def __init__(self, out_features=None, out_indices=None, **kwargs):
        kwargs.pop("stage_names", None)  # written by `to_dict`; always follows from the depths
        super().__init__(**kwargs)
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
