import pytest
import torch

from hf_medmamba import MEDMAMBA_PRESETS, MedMambaConfig, MedMambaForImageClassification


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("medmamba-t", 14_457_222), ("medmamba-s", 18_625_158), ("medmamba-b", 39_864_838)],
)
def test_preset_parameter_counts_equal_upstream(preset, expected):
    with torch.device("meta"):  # count only: no memory, no forward
        model = MedMambaForImageClassification(MedMambaConfig.from_preset(preset, num_labels=6))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_presets_are_the_upstream_variants():
    assert MEDMAMBA_PRESETS["medmamba-s"]["depths"] == [2, 2, 8, 2]
    config = MedMambaConfig.from_preset("MedMamba_B", num_labels=4)
    assert config.depths == [2, 2, 12, 2]
    assert config.dims == [128, 256, 512, 1024]
    assert config.num_labels == 4
    assert MedMambaConfig().depths == MEDMAMBA_PRESETS["medmamba-t"]["depths"]  # the defaults are MedMamba-T


def test_int_dims_expand_per_stage():
    assert MedMambaConfig(dims=64).dims == [64, 128, 256, 512]
    assert MedMambaConfig(depths=[1, 1], dims=8).dims == [8, 16]


def test_round_trip(tmp_path):
    config = MedMambaConfig(
        depths=[1, 2, 1, 1], dims=[8, 16, 32, 64], id2label={0: "a", 1: "b"}, scan_backend="chunked"
    )
    config.save_pretrained(tmp_path)
    loaded = MedMambaConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.hidden_sizes == [8, 16, 32, 64]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depths": [2, 2], "dims": [96, 192, 384]}, "depths has 2 stages but dims has 3"),
        ({"depths": [2, 0, 2, 2]}, "positive integers"),
        ({"dims": [96, 190, 385, 768]}, "must be even"),
        ({"num_labels": 3, "id2label": {0: "a", 1: "b"}}, "disagrees with id2label"),
        ({"scan_backend": "cuda"}, "unknown scan_backend"),
        ({"dt_rank": 0}, "dt_rank"),
    ],
)
def test_inconsistent_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MedMambaConfig(**kwargs)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="available presets: medmamba-b, medmamba-s, medmamba-t"):
        MedMambaConfig.from_preset("medmamba-xl")
