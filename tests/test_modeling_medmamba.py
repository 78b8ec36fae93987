import math

import pytest
import torch
from transformers import AutoModelForImageClassification
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from hf_medmamba import MedMambaConfig, MedMambaForImageClassification, MedMambaImageProcessor, MedMambaModel
from hf_medmamba.tools.key_maps import MEDMAMBA_PREFIXES, map_prefixes

from .conftest import MEDMAMBA_CASES, busi_cls_images, key_list, upstream_case, upstream_case_kwargs
from .model_tester import SSMModelTesterMixin


LABELS = {0: "benign", 1: "malignant", 2: "normal"}


def tiny_config(**kwargs):
    defaults = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "id2label": LABELS, "drop_path_rate": 0.0}
    return MedMambaConfig(**{**defaults, **kwargs})


@pytest.fixture
def model():
    return MedMambaForImageClassification(tiny_config()).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Numerical equivalence with the original code
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MEDMAMBA_CASES)
@pytest.mark.parametrize("backend", ["reference", "chunked", "cpu_kernel"])
def test_matches_upstream_reference_outputs(case, backend):
    """Upstream MedMamba (original code, perturbed weights) -> our model through the recorded prefix map."""
    root = upstream_case(case)
    state_dict = torch.load(root / "state_dict.pth", weights_only=True)
    upstream = upstream_case_kwargs(root)
    config = MedMambaConfig(depths=upstream["depths"], dims=upstream["dims"], num_labels=3, scan_backend=backend)
    model = MedMambaForImageClassification(config).eval()
    model.load_state_dict(map_prefixes(state_dict, MEDMAMBA_PREFIXES), strict=True)
    intermediates = torch.load(root / "intermediates.pt", weights_only=True)
    with torch.no_grad():
        outputs = model(torch.load(root / "input.pt", weights_only=True), output_hidden_states=True)
    for i in range(4):
        expected = intermediates[f"layers.{i}"].permute(0, 3, 1, 2)
        torch.testing.assert_close(outputs.hidden_states[i + 1], expected, rtol=0, atol=1e-4)
    assert (outputs.logits - torch.load(root / "output.pt", weights_only=True)).abs().max() <= 1e-4


def test_upstream_medmamba_t_state_dict_loads_through_the_prefix_map():
    entries = key_list("medmamba_t_state_dict.txt")
    assert len(entries) == 355
    fake = {k: torch.zeros(shape, dtype=getattr(torch, dtype)) for k, (shape, dtype) in entries.items()}
    model = MedMambaForImageClassification(MedMambaConfig.from_preset("medmamba-t", num_labels=6))
    result = model.load_state_dict(map_prefixes(fake, MEDMAMBA_PREFIXES), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: v.shape for k, v in map_prefixes(fake, MEDMAMBA_PREFIXES).items()}


def test_unknown_upstream_keys_are_refused():
    with pytest.raises(KeyError, match="finalconv11"):
        map_prefixes({"finalconv11.weight": torch.zeros(1)}, MEDMAMBA_PREFIXES)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


def test_output_types_and_pooling(model):
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert isinstance(out, ImageClassifierOutputWithNoAttention)
    assert out.logits.shape == (2, 3)
    with torch.no_grad():
        base = model.medmamba(torch.randn(1, 3, 32, 32))
    assert base.last_hidden_state.shape == (1, 128, 1, 1)
    assert base.pooler_output.shape == (1, 128)
    assert base.hidden_states is None


@pytest.mark.parametrize("num_channels", [1, 4])
def test_other_channel_counts(num_channels):
    model = MedMambaForImageClassification(tiny_config(num_channels=num_channels)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, num_channels, 32, 32)).logits.shape == (2, 3)


def test_any_number_of_labels():
    for n in (1, 2, 11):
        model = MedMambaForImageClassification(tiny_config(id2label={i: str(i) for i in range(n)})).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, n)


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def test_loss_decreases_on_real_images():
    images, labels = busi_cls_images("train", per_class=3)
    processor = MedMambaImageProcessor(size={"height": 64, "width": 64})
    batch = processor(images, return_tensors="pt")
    labels = torch.tensor(labels)
    model = MedMambaForImageClassification(tiny_config()).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = model(batch["pixel_values"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    ("problem_type", "labels", "loss_fn"),
    [
        ("single_label_classification", torch.tensor([0, 2]), torch.nn.functional.cross_entropy),
        (
            "multi_label_classification",
            torch.tensor([[1.0, 0, 1], [0, 1, 0]]),
            torch.nn.functional.binary_cross_entropy_with_logits,
        ),
        ("regression", torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]]), torch.nn.functional.mse_loss),
    ],
)
def test_problem_types(problem_type, labels, loss_fn):
    model = MedMambaForImageClassification(tiny_config(problem_type=problem_type)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32), labels=labels)
    torch.testing.assert_close(out.loss, loss_fn(out.logits, labels))


def test_problem_type_is_inferred_like_transformers():
    model = MedMambaForImageClassification(tiny_config())
    model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    assert model.config.problem_type == "single_label_classification"


# ---------------------------------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------------------------------


def test_upstream_initialisation():
    torch.manual_seed(0)
    model = MedMambaForImageClassification(MedMambaConfig.from_preset("medmamba-t", num_labels=6))
    block = model.medmamba.layers[0].blocks[0]
    conv = block.conv33conv33conv11[1]  # Conv2d(48, 48, 3): kaiming-normal, fan_out = 48 * 9, relu gain
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (48 * 9)), rel=0.05)
    assert conv.bias.abs().max() <= 1 / math.sqrt(48 * 9)
    dw = block.self_attention.conv2d  # the depthwise SS2D conv too; PyTorch's fan_out ignores groups: 96 * 9
    assert dw.weight.std().item() == pytest.approx(math.sqrt(2 / (96 * 9)), rel=0.1)
    head = model.head.weight  # trunc_normal_(std=0.02) truncates at +-2 (absolute), as upstream: a plain normal
    assert head.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(model.head.bias, torch.zeros(6))
    bn = block.conv33conv33conv11[0]
    assert torch.equal(bn.weight, torch.ones(48))
    assert torch.equal(bn.running_var, torch.ones(48))
    torch.testing.assert_close(block.self_attention.A_logs[0], torch.log(torch.arange(1, 17.0)))


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pixel_values", "error", "message"),
    [
        (torch.randn(1, 1, 64, 64), ValueError, "expects 3-channel images"),
        (torch.randn(1, 3, 16, 16), ValueError, "at least 32x32"),
        (torch.randn(1, 3, 64, 70), ValueError, "divisible by 32"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), TypeError, "floating-point"),
        (torch.full((1, 3, 64, 64), float("nan")), ValueError, "NaN"),
        (torch.randn(0, 3, 64, 64), ValueError, "empty batch"),
        (torch.randn(3, 64, 64), ValueError, "unsqueeze"),
    ],
)
def test_bad_pixel_values_raise_at_the_entry(model, pixel_values, error, message):
    with pytest.raises(error, match=message):
        model(pixel_values)


def test_labels_out_of_range_raise(model):
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\]"):
        model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 3]))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_file_gives_a_clear_error(model, tmp_path, damage):
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file")
    with pytest.raises(OSError, match="corrupt or truncated"):
        AutoModelForImageClassification.from_pretrained(tmp_path)


class TestMedMamba(SSMModelTesterMixin):
    base_class = MedMambaModel
    head_class = MedMambaForImageClassification
    auto_head_class = AutoModelForImageClassification

    def make_config(self, **overrides):
        return tiny_config(**overrides)

    def make_labels(self, config, batch, generator):
        return torch.randint(0, config.num_labels, (batch,), generator=generator)

    def expected_hidden_state_shapes(self, config, batch, height, width):
        """The patch embedding, then every stage after its merging (the last stage has none)."""
        dims, sizes = config.dims, [(height // 4 // 2**i, width // 4 // 2**i) for i in range(4)]
        merged = [(batch, dims[min(i + 1, 3)], *sizes[min(i + 1, 3)]) for i in range(4)]
        return [(batch, dims[0], *sizes[0]), *merged]
