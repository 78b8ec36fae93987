"""Upstream state-dict key names -> hf_medmamba key names: the prefix maps of the three architectures (data) and
`map_prefixes`, which applies one."""

# Upstream MedMamba ``VSSM`` keys -> ``MedMambaForImageClassification`` keys: a prefix change only; every name below
# the prefix is upstream's.
MEDMAMBA_PREFIXES = {
    "patch_embed.": "medmamba.patch_embed.",
    "layers.": "medmamba.layers.",
    "head.": "head.",
}


# VMamba v0 checkpoint (``ckpt["model"]``) keys -> ``VMambaForImageClassification`` keys.
VMAMBA_PREFIXES = {
    "patch_embed.": "vmamba.patch_embed.",
    "layers.": "vmamba.layers.",
    "norm.": "vmamba.norm.",
    "head.": "head.",
}

# Upstream ``VMUNet`` keys -> ``VMUNetForSegmentation`` keys: the 1x1 head moves up one level, the rest is unchanged.
VMUNET_PREFIXES = {
    "vmunet.final_conv.": "final_conv.",
    "vmunet.": "vmunet.",
}


def map_prefixes(state_dict, prefixes):
    """Rename keys by their leading prefix (the first match in ``prefixes`` order); a key that matches no prefix
    raises (nothing is dropped silently)."""
    mapped, unknown = {}, []
    for key, value in state_dict.items():
        for old, new in prefixes.items():
            if key.startswith(old):
                mapped[new + key[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"{len(unknown)} key(s) match none of the expected prefixes {sorted(prefixes)}: {unknown[:5]}. "
            "This is not a checkpoint of the expected architecture."
        )
    return mapped
