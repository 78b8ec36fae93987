"""The intensity window of the image processors (`hf_medmamba.image_processing_common`): applied in NumPy to data in
modality units, never to 8-bit display images, saved in ``preprocessor_config.json`` and reloaded by the Auto classes
and by ``pipeline``."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import pipeline
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from hf_medmamba import MedMambaImageProcessor, VMUNetConfig, VMUNetForSegmentation, VMUNetImageProcessor

from .conftest import data_path


SYNAPSE = [-125.0, 275.0]
SIZE = {"height": 16, "width": 20}
MODEL_SIZE = {"height": 32, "width": 32}  # VM-UNet's smallest input


def ct_processor(size=SIZE, **kwargs):
    return VMUNetImageProcessor(num_channels=1, normalization_mode="standard", mask_mode="index", size=size, **kwargs)


def hu_slice():
    rng = np.random.default_rng(0)
    return rng.integers(-1024, 1500, size=(16, 20)).astype(np.int16)


def test_window_clips_and_scales_data_in_modality_units():
    hu = hu_slice()
    out = ct_processor(window=SYNAPSE)(hu, return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_allclose(out, np.clip((hu + 125.0) / 400.0, 0, 1), atol=1e-6)
    stretched = ct_processor()(hu, return_tensors="np")["pixel_values"][0, 0]  # no window: min-max per image
    np.testing.assert_allclose(stretched, (hu - hu.min()) / float(hu.max() - hu.min()), atol=1e-6)
    # floats too, whatever their range (a float slice that happens to lie within [0, 1] is still in HU)
    small = np.full((16, 20), 0.5, dtype=np.float32)
    small[0, 0] = 1.0
    windowed = ct_processor(window=SYNAPSE)(small, return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_allclose(windowed, np.clip((small + 125.0) / 400.0, 0, 1), atol=1e-6)
    # per call: another window, or none
    other = ct_processor(window=SYNAPSE)(hu, window=(0, 100), return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_allclose(other, np.clip(hu / 100.0, 0, 1), atol=1e-6)
    off = ct_processor(window=SYNAPSE)(hu, do_window=False, return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_allclose(off, stretched, atol=1e-6)


def test_eight_bit_images_are_display_images_and_pass_unwindowed():
    with PIL.Image.open(data_path("ct_abdomen_organs", "slices", "train", "images", "slice_015.png")) as image:
        png = image.resize((20, 16))
    for image in (png, np.asarray(png)):
        with_window = ct_processor(window=SYNAPSE)(image, return_tensors="np")["pixel_values"]
        without = ct_processor()(image, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(with_window, without)
        np.testing.assert_allclose(without[0, 0], np.asarray(png) / 255.0, atol=1e-6)


def test_classification_processor_windows_too():
    hu = hu_slice()
    out = MedMambaImageProcessor(num_channels=1, size=SIZE, window=SYNAPSE)(hu, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(out[0, 0], (np.clip((hu + 125.0) / 400.0, 0, 1) - 0.5) / 0.5, atol=1e-5)


@pytest.mark.parametrize("window", [(275, -125), (1, 1), (0, float("nan")), (1, 2, 3), "ab"])
def test_invalid_windows_raise(window):
    with pytest.raises((ValueError, TypeError), match="window"):
        ct_processor(window=window)
    if isinstance(window, tuple) and len(window) == 2:
        with pytest.raises(ValueError, match="low < high"):
            ct_processor()(hu_slice(), window=window)


def test_window_is_saved_and_used_by_auto_classes_and_pipeline(tmp_path):
    torch.manual_seed(0)
    tiny = {"depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
    config = VMUNetConfig(**tiny, num_channels=1, id2label={0: "background", 1: "liver", 2: "spleen"})
    model = VMUNetForSegmentation(config).eval()
    model.save_pretrained(tmp_path)
    ct_processor(size=MODEL_SIZE, window=SYNAPSE).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["window"] == SYNAPSE
    unset = VMUNetImageProcessor().to_dict()
    assert "window" not in unset and unset["do_window"] is True  # no window unless one is set

    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VMUNetImageProcessor and loaded.window == SYNAPSE
    hu = hu_slice()
    np.testing.assert_array_equal(
        loaded(hu, return_tensors="np")["pixel_values"],
        ct_processor(size=MODEL_SIZE, window=SYNAPSE)(hu, return_tensors="np")["pixel_values"],
    )

    # pipeline() loads the same processor; it converts every input to 8-bit RGB (transformers' load_image), so HU
    # cannot reach it through a pipeline, and an 8-bit slice must come out as with the processor and model called
    # directly (not windowed a second time)
    segmenter = pipeline("image-segmentation", model=str(tmp_path), trust_remote_code=True)
    assert segmenter.image_processor.window == SYNAPSE
    with PIL.Image.open(data_path("ct_abdomen_organs", "slices", "train", "images", "slice_015.png")) as image:
        png = image.convert("RGB")  # what the pipeline hands the processor
    segments = segmenter(png)
    with torch.no_grad():
        logits = model(**loaded(png, return_tensors="pt")).logits
    (expected,) = loaded.post_process_semantic_segmentation(logits, target_sizes=[(png.height, png.width)])
    labels = np.full((png.height, png.width), -1)
    for segment in segments:
        labels[np.asarray(segment["mask"]) > 0] = {name: i for i, name in config.id2label.items()}[segment["label"]]
    assert (labels == expected.numpy()).mean() > 0.999  # the pipeline's own batching may flip a near-tie pixel
