"""Validation shared by the configurations of MedMamba, VMamba and VM-UNet."""

from .selective_scan import SCAN_BACKENDS


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
