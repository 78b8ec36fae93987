import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from hf_medmamba import MedMambaConfig, MedMambaImageProcessor
from hf_medmamba.image_processing_common import ImageInputError

from .conftest import busi_cls_images


def upstream_eval_transform(image, size=224):
    """torchvision's Resize((224, 224)) + ToTensor + Normalize(0.5, 0.5), written out with PIL and NumPy."""
    array = np.asarray(image.convert("RGB").resize((size, size), PIL.Image.BILINEAR), dtype=np.float32) / 255
    return ((array - 0.5) / 0.5).transpose(2, 0, 1)


@pytest.fixture
def ultrasound():
    images, _ = busi_cls_images("test", per_class=1)
    return images[0].resize((300, 200))  # not square, not 224


def test_defaults_match_upstream_evaluation(ultrasound):
    processor = MedMambaImageProcessor()
    out = processor(ultrasound, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 224, 224)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), upstream_eval_transform(ultrasound), atol=1e-6)


def test_inputs_of_every_kind_agree(ultrasound):
    processor = MedMambaImageProcessor()
    array = np.array(ultrasound)  # (H, W) uint8
    rgb = np.array(ultrasound.convert("RGB"))
    inputs = [ultrasound, array, rgb, rgb.transpose(2, 0, 1), torch.from_numpy(rgb), ultrasound.convert("RGBA")]
    out = processor(inputs, return_tensors="pt")["pixel_values"]
    assert out.shape == (len(inputs), 3, 224, 224)
    for i in range(1, len(inputs)):
        torch.testing.assert_close(out[i], out[0], rtol=0, atol=1e-6)
    batch = processor(np.stack([rgb, rgb]), return_tensors="pt")["pixel_values"]  # a 4-D (N, H, W, C) batch
    torch.testing.assert_close(batch, out[:2].clone().copy_(out[0]), rtol=0, atol=1e-6)


def test_gray_model_gets_gray_images(ultrasound):
    processor = MedMambaImageProcessor(num_channels=1)
    colour = ultrasound.convert("RGB")
    colour.paste((200, 30, 30), (10, 10, 60, 60))  # a colour overlay, as some BUSI images have
    out = processor(colour, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 1, 224, 224)
    expected = np.asarray(colour.convert("L").resize((224, 224), PIL.Image.BILINEAR), dtype=np.float32) / 255
    np.testing.assert_allclose(out[0, 0].numpy(), (expected - 0.5) / 0.5, atol=2 / 255)


def test_sixteen_bit_images_are_stretched_per_image():
    values = np.linspace(1000, 4095, 64 * 48, dtype=np.float64).reshape(48, 64).astype(np.uint16)
    image = PIL.Image.fromarray(values)  # mode I;16, as a 16-bit PNG opens
    assert image.mode == "I;16"
    processor = MedMambaImageProcessor(size={"height": 48, "width": 64})  # no resize: check the value mapping
    out = processor(image, return_tensors="pt")["pixel_values"][0, 0].numpy()
    stretched = (values.astype(np.float32) - 1000) / (4095 - 1000)  # to [0, 1]
    np.testing.assert_allclose(out, (stretched - 0.5) / 0.5, atol=1e-5)


def test_float_arrays():
    processor = MedMambaImageProcessor(size={"height": 32, "width": 32})
    unit = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    out = processor(unit, return_tensors="pt")["pixel_values"][0, 0].numpy()
    np.testing.assert_allclose(out, (unit - 0.5) / 0.5, atol=1e-5)  # [0, 1] floats are intensities
    hounsfield = unit * 1400 - 1000
    stretched = processor(hounsfield, return_tensors="pt")["pixel_values"][0, 0].numpy()
    expected = (hounsfield - hounsfield.min()) / (hounsfield.max() - hounsfield.min())
    np.testing.assert_allclose(stretched, (expected - 0.5) / 0.5, atol=1e-4)


def test_palette_image_becomes_rgb():
    palette = PIL.Image.new("P", (40, 30))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 20, 30))
    out = MedMambaImageProcessor(size={"height": 30, "width": 40})(palette, return_tensors="pt")["pixel_values"]
    assert out[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0]  # red after normalisation
    assert out[0, :, 0, 39].tolist() == [-1.0, -1.0, -1.0]


def test_save_and_load(tmp_path):
    processor = MedMambaImageProcessor(num_channels=1, size={"height": 128, "width": 128})
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, MedMambaImageProcessor)
    assert loaded.num_channels == 1
    assert loaded.size.height == 128
    assert loaded.to_dict() == processor.to_dict()
    assert tuple(loaded.image_mean) == (0.5,)


def test_registered_for_the_config():
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    assert IMAGE_PROCESSOR_MAPPING[MedMambaConfig]["pil"] is MedMambaImageProcessor


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((30, 101, 122), dtype=np.float32), {}, "looks like a 3-D volume"),
        (np.zeros((2, 5, 64, 64), dtype=np.float32), {}, "looks like a 3-D volume"),  # a batch of volumes
        (np.zeros((64, 64, 3), dtype=np.uint8), {"do_convert_rgb": False, "num_channels": 1}, "do_convert_rgb=True"),
        ("image.png", {}, "unsupported image type str"),
        (np.full((8, 8), np.nan, dtype=np.float32), {}, "NaN"),
        ([], {}, "empty list"),
    ],
)
def test_bad_images_raise_clear_errors(image, kwargs, message):
    with pytest.raises(ImageInputError, match=message):
        MedMambaImageProcessor(**kwargs)(image, return_tensors="pt")


def test_mean_with_the_wrong_length_raises():
    processor = MedMambaImageProcessor(num_channels=1, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="one value per channel"):
        processor(np.zeros((8, 8), dtype=np.uint8))
