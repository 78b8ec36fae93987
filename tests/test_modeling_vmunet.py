import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoModelForSemanticSegmentation, pipeline
from transformers.modeling_outputs import SemanticSegmenterOutput

from hf_medmamba import (
    VMambaConfig,
    VMambaForImageClassification,
    VMUNetConfig,
    VMUNetForSegmentation,
    VMUNetImageProcessor,
    VMUNetModel,
)
from hf_medmamba.losses import bce_dice_loss, ce_dice_loss
from hf_medmamba.tools.key_maps import VMAMBA_PREFIXES, VMUNET_PREFIXES, map_prefixes

from .conftest import VMUNET_CASES, data_path, key_list, upstream_case, upstream_case_kwargs
from .model_tester import SSMModelTesterMixin


BINARY = {0: "background", 1: "lesion"}


def tiny_config(**kwargs):
    defaults = {
        "depths": [1, 1, 1, 1],
        "depths_decoder": [1, 1, 1, 1],
        "dims": [16, 32, 64, 128],
        "id2label": BINARY,
        "sigmoid_head": True,
        "drop_path_rate": 0.0,
    }
    return VMUNetConfig(**{**defaults, **kwargs})


@pytest.fixture
def model():
    return VMUNetForSegmentation(tiny_config()).eval()


def busi_seg(split, count, size=64):
    """A few real BUSI ultrasound images with their {0, 255} lesion masks, through the processor."""
    root = data_path("busi_seg", split)
    names = sorted(p.name for p in (root / "images").glob("*.png"))[:count]
    images, masks = [], []
    for name in names:
        with PIL.Image.open(root / "images" / name) as im, PIL.Image.open(root / "masks" / name) as mk:
            images.append(im.copy())
            masks.append(mk.copy())
    return VMUNetImageProcessor(size={"height": size, "width": size})(images, masks, return_tensors="pt")


# ---------------------------------------------------------------------------------------------------------------------
# Upstream equivalence and weight layout
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VMUNET_CASES)
@pytest.mark.parametrize("backend", ["reference", "chunked", "cpu_kernel"])
def test_matches_upstream_reference_outputs(case, backend):
    root = upstream_case(case)
    state_dict = torch.load(root / "state_dict.pth", weights_only=True)
    upstream = upstream_case_kwargs(root)
    config = VMUNetConfig(
        depths=upstream["depths"],
        depths_decoder=upstream["depths_decoder"],
        dims=upstream.get("dims", 96),
        id2label=BINARY,
        sigmoid_head=True,
        scan_backend=backend,
    )
    model = VMUNetForSegmentation(config).eval()
    model.load_state_dict(map_prefixes(state_dict, VMUNET_PREFIXES), strict=True)
    intermediates = torch.load(root / "intermediates.pt", weights_only=True)
    with torch.no_grad():
        out = model(torch.load(root / "input.pt", weights_only=True), output_hidden_states=True)
    encoder, decoder = out.hidden_states[:5], out.hidden_states[5:]
    for i in range(4):
        expected = intermediates[f"vmunet.layers.{i}"].permute(0, 3, 1, 2)
        torch.testing.assert_close(encoder[i + 1], expected, rtol=0, atol=1e-4)
        expected = intermediates[f"vmunet.layers_up.{i}"].permute(0, 3, 1, 2)
        torch.testing.assert_close(decoder[i], expected, rtol=0, atol=1e-4)
    assert (out.logits - torch.load(root / "logits.pt", weights_only=True)).abs().max() <= 1e-4
    probabilities = torch.sigmoid(out.logits)  # upstream's VMUNet.forward applies the sigmoid for one class
    assert (probabilities - torch.load(root / "output.pt", weights_only=True)).abs().max() <= 1e-4


@pytest.mark.parametrize(
    ("key_list_name", "count", "build", "prefixes"),
    [
        (
            "vmunet_state_dict.txt",
            222,
            lambda: VMUNetForSegmentation(VMUNetConfig.from_preset("vmunet-paper")),
            VMUNET_PREFIXES,
        ),
        (
            "vmunet_default_state_dict.txt",
            417,
            lambda: VMUNetForSegmentation(VMUNetConfig.from_preset("vmunet-default")),
            VMUNET_PREFIXES,
        ),
        (
            "vmamba_s_ckpt_keys.txt",
            446,
            lambda: VMambaForImageClassification(VMambaConfig.from_preset("vmamba-s")),
            VMAMBA_PREFIXES,
        ),
    ],
)
def test_upstream_key_lists_load_with_nothing_missing_or_unexpected(key_list_name, count, build, prefixes):
    entries = {k: (shape, getattr(torch, dtype)) for k, (shape, dtype) in key_list(key_list_name).items()}
    assert len(entries) == count
    with torch.device("meta"):
        model = build()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = map_prefixes(entries, prefixes)
    assert {k: shape for k, (shape, _) in mapped.items()} == ours


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("vmunet-paper", 27_427_561), ("vmunet-default", 44_273_833)],
)
def test_preset_parameter_counts(preset, expected):
    with torch.device("meta"):
        model = VMUNetForSegmentation(VMUNetConfig.from_preset(preset))
    assert sum(p.numel() for p in model.parameters()) == expected


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 96), (70, 90), (33, 40)])
def test_logits_have_the_input_size(model, height, width):
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert isinstance(out, SemanticSegmenterOutput)
    assert out.logits.shape == (2, 1, height, width)


def test_padding_does_not_change_the_multiple_of_32_case(model):
    """Sizes that are multiples of 32 take no padding path: the same as cropping a padded run is not expected."""
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model(x).logits
        padded_input = model(torch.nn.functional.pad(x, (0, 32, 0, 32))).logits[..., :64, :64]
    assert not torch.allclose(full, padded_input)  # the pad changes the receptive field: cropping is not a no-op
    with torch.no_grad():
        odd = model(x[..., :60, :62]).logits
        manual = model(torch.nn.functional.pad(x[..., :60, :62], (0, 2, 0, 4))).logits[..., :60, :62]
    torch.testing.assert_close(odd, manual)


def test_one_channel_input_is_repeated_to_three():
    model = VMUNetForSegmentation(tiny_config(num_channels=1)).eval()
    three = VMUNetForSegmentation(tiny_config()).eval()
    three.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, three(x.repeat(1, 3, 1, 1)).logits)


# ---------------------------------------------------------------------------------------------------------------------
# Losses and training
# ---------------------------------------------------------------------------------------------------------------------


def test_loss_is_upstreams(model):
    batch = busi_seg("train", 2)
    out = model(**batch)
    torch.testing.assert_close(out.loss, bce_dice_loss(out.logits, batch["labels"]))
    multi = VMUNetForSegmentation(tiny_config(id2label={i: str(i) for i in range(3)}, sigmoid_head=False)).eval()
    labels = torch.randint(0, 3, (2, 64, 64))
    out = multi(batch["pixel_values"], labels=labels)
    torch.testing.assert_close(out.loss, ce_dice_loss(out.logits, labels))


def test_loss_decreases_on_real_images():
    batch = busi_seg("train", 4)
    model = VMUNetForSegmentation(tiny_config()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses  # BCE falls fast, Dice on small lesions slowly


def ct_slices(count=4, size=64):
    """Real abdominal CT slices (1 channel) with 9-class organ labels."""
    root = data_path("ct_abdomen_organs", "slices", "train")
    names = sorted(p.name for p in (root / "images").glob("*.png"))[10 : 10 + count]
    images, labels = [], []
    for name in names:
        with PIL.Image.open(root / "images" / name) as im, PIL.Image.open(root / "labels" / name) as lb:
            images.append(im.copy())
            labels.append(lb.copy())
    processor = VMUNetImageProcessor(
        num_channels=1, size={"height": size, "width": size}, normalization_mode="standard", mask_mode="index"
    )
    return processor(images, labels, return_tensors="pt")


def test_multi_organ_ct():
    batch = ct_slices()
    assert batch["pixel_values"].shape == (4, 1, 64, 64)
    assert batch["pixel_values"].min() >= 0 and batch["pixel_values"].max() <= 1  # [0, 1] slices, as Synapse
    assert batch["labels"].max() <= 8 and len(batch["labels"].unique()) > 3
    config = VMUNetConfig.from_preset(
        "vmunet-synapse", depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1], dims=[16, 32, 64, 128]
    )
    assert (config.num_labels, config.num_channels, config.sigmoid_head) == (9, 1, False)
    model = VMUNetForSegmentation(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(6):
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        first = out.loss.item() if first is None else first
    assert out.logits.shape == (4, 9, 64, 64)
    assert out.loss.item() < first
    maps = VMUNetImageProcessor().post_process_semantic_segmentation(out, target_sizes=[(101, 122)] * 4)
    assert maps[0].shape == (101, 122)
    assert maps[0].max() <= 8


# ---------------------------------------------------------------------------------------------------------------------
# Pipeline and post-processing
# ---------------------------------------------------------------------------------------------------------------------


def test_segmentation_pipeline(model, tmp_path):
    model.save_pretrained(tmp_path)
    VMUNetImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    segmenter = pipeline("image-segmentation", model=str(tmp_path), trust_remote_code=False)
    image = PIL.Image.open(data_path("busi_seg", "test", "images", "benign_0032.png")).resize((120, 90))
    results = segmenter(image)
    assert {r["label"] for r in results} <= {"background", "lesion"}
    assert results
    for r in results:
        assert r["mask"].size == (120, 90)
        assert set(np.unique(np.array(r["mask"]))) <= {0, 255}
    expected = VMUNetImageProcessor(size={"height": 64, "width": 64})(image, return_tensors="pt")
    with torch.no_grad():
        label_map = VMUNetImageProcessor().post_process_semantic_segmentation(
            model(**expected), target_sizes=[(90, 120)]
        )[0]
    for r in results:
        class_id = 1 if r["label"] == "lesion" else 0
        assert np.array_equal(np.array(r["mask"]) > 0, (label_map == class_id).numpy())


def test_post_processing_threshold_and_target_sizes():
    processor = VMUNetImageProcessor()
    logits = torch.tensor([[[[-1.0, 0.5], [2.0, -0.1]]]])  # one channel: sigmoid >= 0.5 iff logit >= 0
    (binary,) = processor.post_process_semantic_segmentation(logits)
    assert binary.tolist() == [[0, 1], [1, 0]]
    (strict,) = processor.post_process_semantic_segmentation(logits, threshold=0.8)  # sigmoid(2) = 0.88
    assert strict.tolist() == [[0, 0], [1, 0]]
    multi = torch.zeros(1, 3, 2, 2)
    multi[0, 2, 0, 0] = 5
    multi[0, 1, 1, 1] = 5
    (argmax,) = processor.post_process_semantic_segmentation(multi, target_sizes=[(4, 4)])
    assert argmax.shape == (4, 4)
    assert argmax[0, 0] == 2 and argmax[3, 3] == 1


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        (torch.randint(0, 2, (2, 64, 64)) * 255, ValueError, "raw \\{0, 255\\} mask"),
        (torch.full((2, 64, 64), 3), ValueError, "outside the classes 0..1"),
        (torch.zeros(2, 32, 32, dtype=torch.long), ValueError, "do not match the images"),
        (torch.zeros(2, 64, 64), TypeError, "integer class indices"),
        (torch.full((2, 64, 64), 255), ValueError, "raw \\{0, 255\\} mask|every pixel"),
    ],
)
def test_bad_labels_raise(model, labels, error, message):
    with pytest.raises(error, match=message):
        model(torch.randn(2, 3, 64, 64), labels=labels)


def test_all_ignored_multiclass_labels_raise():
    model = VMUNetForSegmentation(tiny_config(id2label={i: str(i) for i in range(3)}, sigmoid_head=False))
    with pytest.raises(ValueError, match="every pixel"):
        model(torch.randn(1, 3, 32, 32), labels=torch.full((1, 32, 32), 255))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_labels": 1}, "sigmoid_head=True"),
        ({"id2label": {0: "a", 1: "b", 2: "c"}, "sigmoid_head": True}, "exactly 2 labels"),
        ({"num_channels": 4}, "num_channels must be 1 or 3"),
        ({"depths_decoder": [2, 2, 2]}, "depths_decoder has 3 stages"),
    ],
)
def test_bad_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VMUNetConfig(**kwargs)


def test_bad_pixel_values(model):
    with pytest.raises(ValueError, match="expects 3-channel"):
        model(torch.randn(1, 2, 64, 64))
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 16, 64))


class TestVMUNet(SSMModelTesterMixin):
    base_class = VMUNetModel
    head_class = VMUNetForSegmentation
    auto_head_class = AutoModelForSemanticSegmentation
    input_size = (64, 96)

    def make_config(self, **overrides):
        return tiny_config(**overrides)

    def make_labels(self, config, batch, generator):
        return torch.randint(0, config.num_labels, (batch, *self.input_size), generator=generator)

    def expected_hidden_state_shapes(self, config, batch, height, width):
        """Encoder: the patch embedding and every stage after its merging; decoder: its stages, deepest first."""
        dims, sizes = config.dims, [(height // 4 // 2**i, width // 4 // 2**i) for i in range(4)]
        encoder = [(batch, dims[0], *sizes[0])] + [
            (batch, dims[min(i + 1, 3)], *sizes[min(i + 1, 3)]) for i in range(4)
        ]
        decoder = [(batch, dims[3 - i], *sizes[3 - i]) for i in range(4)]
        return encoder + decoder

    def test_base_model_features_are_full_resolution(self):
        with torch.no_grad():
            features = self.make_model(VMUNetModel)(torch.randn(1, 3, 64, 64)).last_hidden_state
        assert features.shape == (1, 4, 64, 64)  # dims[0] / patch_size channels at the input size
