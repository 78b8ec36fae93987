import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from hf_medmamba import VMambaImageProcessor, VMUNetImageProcessor
from hf_medmamba.image_processing_common import ImageInputError

from .conftest import data_path


def busi_pair(name="benign_0032.png"):
    root = data_path("busi_seg", "test")
    with PIL.Image.open(root / "images" / name) as image, PIL.Image.open(root / "masks" / name) as mask:
        return image.copy(), mask.copy()


def test_isic_mode_is_min_max_before_resizing():
    image, _ = busi_pair()
    image = image.resize((300, 200))
    out = VMUNetImageProcessor()(image, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 256, 256)
    gray = np.asarray(image, dtype=np.float32)
    stretched = 255 * (gray - gray.min()) / (gray.max() - gray.min())  # upstream myNormalize, on the original size
    expected = np.asarray(PIL.Image.fromarray(stretched).resize((256, 256), PIL.Image.BILINEAR))
    for channel in range(3):
        np.testing.assert_allclose(out[0, channel].numpy(), expected, atol=1e-3)


def test_standard_mode_for_ct():
    ct = np.load(data_path("ct_abdomen_organs", "synapse_format", "train_npz", "tsexample_slice015.npz"))
    processor = VMUNetImageProcessor(
        num_channels=1, normalization_mode="standard", mask_mode="index", size={"height": 101, "width": 122}
    )
    out = processor(ct["image"], ct["label"], return_tensors="pt")
    np.testing.assert_allclose(out["pixel_values"][0, 0].numpy(), ct["image"], atol=1e-6)  # [0, 1] slices unchanged
    assert torch.equal(out["labels"][0], torch.from_numpy(ct["label"].astype(np.int64)))


def test_binary_masks_become_zero_one_and_resize_nearest():
    image, mask = busi_pair()
    assert set(np.unique(np.asarray(mask))) == {0, 255}
    out = VMUNetImageProcessor(size={"height": 64, "width": 64})(image, mask, return_tensors="pt")
    labels = out["labels"]
    assert labels.dtype == torch.int64
    assert labels.shape == (1, 64, 64)
    expected = np.asarray(mask.resize((64, 64), PIL.Image.NEAREST)) == 255
    assert np.array_equal(labels[0].numpy(), expected.astype(np.int64))
    as_bool = VMUNetImageProcessor(size={"height": 64, "width": 64})(image, np.asarray(mask) > 0, return_tensors="pt")
    assert torch.equal(as_bool["labels"], labels)


def test_index_masks_and_reduce_labels():
    image = np.zeros((4, 4), dtype=np.uint8) + 50
    mask = np.array([[0, 1, 2, 3]] * 4)
    processor = VMUNetImageProcessor(mask_mode="index", do_resize=False, normalization_mode="standard")
    assert processor(image, mask)["labels"][0].tolist() == mask.tolist()
    reduced = processor(image, mask, do_reduce_labels=True)["labels"][0]
    assert reduced[0].tolist() == [255, 0, 1, 2]


@pytest.mark.parametrize(
    ("mask", "kwargs", "message"),
    [
        (np.array([[0, 128], [255, 0]], dtype=np.uint8), {}, r"only \{0, 255\} or \{0, 1\}"),
        (np.zeros((3, 2, 2), dtype=np.uint8), {}, "must be 2-D"),
        (np.array([[0.5, 1.0], [0.0, 0.0]]), {"mask_mode": "index"}, "non-integer"),
        (np.array([[-1, 1], [0, 0]]), {"mask_mode": "index"}, "non-negative"),
        (PIL.Image.new("RGB", (2, 2)), {}, "single-channel"),
    ],
)
def test_bad_masks_raise(mask, kwargs, message):
    processor = VMUNetImageProcessor(do_resize=False, normalization_mode="standard", **kwargs)
    with pytest.raises(ImageInputError, match=message):
        processor(np.full((2, 2), 7, dtype=np.uint8), mask)


def test_mask_of_another_size_raises():
    processor = VMUNetImageProcessor(do_resize=False, normalization_mode="standard")
    with pytest.raises(ImageInputError, match="does not match its image"):
        processor(np.zeros((8, 8), dtype=np.uint8), np.zeros((8, 9), dtype=np.uint8))


def test_constant_image_in_isic_mode_raises():
    with pytest.raises(ImageInputError, match="constant image"):
        VMUNetImageProcessor()(np.full((8, 8), 3, dtype=np.uint8))


def test_invalid_modes_raise():
    with pytest.raises(ValueError, match="normalization_mode"):
        VMUNetImageProcessor(normalization_mode="imagenet")
    with pytest.raises(ValueError, match="mask_mode"):
        VMUNetImageProcessor()(np.zeros((8, 8), dtype=np.uint8), mask_mode="rgb")


def test_save_and_load(tmp_path):
    processor = VMUNetImageProcessor(num_channels=1, normalization_mode="standard", mask_mode="index", threshold=0.3)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, VMUNetImageProcessor)
    assert (loaded.normalization_mode, loaded.mask_mode, loaded.threshold, loaded.num_channels) == (
        "standard",
        "index",
        0.3,
        1,
    )


def test_vmamba_imagenet_evaluation_transform():
    image, _ = busi_pair()
    image = image.convert("RGB").resize((300, 240))
    out = VMambaImageProcessor()(image, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 224, 224)
    # torchvision: Resize(256) (shorter side, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize(ImageNet)
    resized = image.resize((320, 256), PIL.Image.BICUBIC)  # 300 x 240 -> int(256 * 300 / 240) = 320
    left, top = round((320 - 224) / 2.0), round((256 - 224) / 2.0)
    array = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((array - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)
