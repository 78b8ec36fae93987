"""Property-based tests of the image processors and the post-processing (hypothesis).

Every call must either return a correctly shaped result or raise our documented error (`ValueError`, of which
`ImageInputError` is a subclass): never an internal exception. The default profile keeps CI fast; run
`HYPOTHESIS_PROFILE=slow python -m pytest tests/test_fuzz_processing.py` for many more examples.
"""

import numpy as np
import PIL.Image
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_medmamba import MedMambaImageProcessor, VMambaImageProcessor, VMUNetImageProcessor


MODES = ["L", "LA", "RGB", "RGBA", "I;16", "F", "P", "1", "I", "CMYK"]
DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, np.bool_]

sizes = st.integers(min_value=1, max_value=1024)
small_sizes = st.integers(min_value=1, max_value=96)


@st.composite
def pil_images(draw, max_side=1024):
    mode = draw(st.sampled_from(MODES))
    width, height = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if mode in ("I;16",):
        array = rng.integers(0, 65535, (height, width), dtype=np.uint16)
        return PIL.Image.fromarray(array)
    if mode == "F":
        return PIL.Image.fromarray(rng.normal(size=(height, width)).astype(np.float32))
    if mode == "I":
        return PIL.Image.fromarray(rng.integers(-2000, 3000, (height, width), dtype=np.int32))
    image = PIL.Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    return image.convert(mode)


@st.composite
def arrays(draw, max_side=1024):
    dtype = draw(st.sampled_from(DTYPES))
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    layout = draw(st.sampled_from(["hw", "chw", "hwc"]))
    channels = draw(st.sampled_from([1, 3, 4]))
    shape = {"hw": (height, width), "chw": (channels, height, width), "hwc": (height, width, channels)}[layout]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == np.bool_:
        array = rng.random(shape) > 0.5
    elif np.issubdtype(dtype, np.floating):
        array = (rng.normal(size=shape) * draw(st.sampled_from([0.1, 1.0, 1000.0]))).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(max(info.min, -5000), min(info.max, 70000), shape).astype(dtype)
    return torch.from_numpy(array) if draw(st.booleans()) else array


def check_result(processor, images, call, expected_hw, channels):
    try:
        out = call()
    except ValueError:
        return  # a documented, explained refusal (e.g. a constant image in ISIC mode)
    pixel_values = out["pixel_values"]
    assert pixel_values.shape == (len(images), channels, *expected_hw)
    assert pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()


@settings(deadline=None)
@given(images=st.lists(st.one_of(pil_images(), arrays()), min_size=1, max_size=3), num_channels=st.sampled_from([1, 3]))
def test_medmamba_processor_never_crashes(images, num_channels):
    processor = MedMambaImageProcessor(num_channels=num_channels, size={"height": 32, "width": 32})
    check_result(processor, images, lambda: processor(images, return_tensors="pt"), (32, 32), num_channels)


@settings(deadline=None)
@given(
    images=st.lists(st.one_of(pil_images(), arrays()), min_size=1, max_size=3),
    mode=st.sampled_from(["isic", "standard"]),
)
def test_vmunet_processor_never_crashes(images, mode):
    processor = VMUNetImageProcessor(size={"height": 32, "width": 48}, normalization_mode=mode)
    check_result(processor, images, lambda: processor(images, return_tensors="pt"), (32, 48), 3)


@settings(deadline=None)
@given(image=st.one_of(pil_images(max_side=300), arrays(max_side=300)))
def test_vmamba_processor_never_crashes(image):
    processor = VMambaImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    check_result(processor, [image], lambda: processor(image, return_tensors="pt"), (32, 32), 3)


@settings(deadline=None)
@given(
    height=small_sizes,
    width=small_sizes,
    values=st.sampled_from([(0, 255), (0, 1), (0, 1, 2, 5), (0, 128, 255), (True, False)]),
    mode=st.sampled_from(["binary", "index"]),
    as_pil=st.booleans(),
)
def test_masks_never_crash(height, width, values, mode, as_pil):
    rng = np.random.default_rng(height * 1000 + width)
    mask = rng.choice(np.array(values), size=(height, width))
    if as_pil and mask.dtype != np.bool_:
        mask = PIL.Image.fromarray(mask.astype(np.uint8))
    image = rng.integers(0, 255, (height, width), dtype=np.uint8)
    processor = VMUNetImageProcessor(size={"height": 16, "width": 16}, mask_mode=mode, normalization_mode="standard")
    try:
        out = processor(image, mask, return_tensors="pt")
    except ValueError:
        return
    labels = out["labels"]
    assert labels.shape == (1, 16, 16)
    assert labels.dtype == torch.int64
    if mode == "binary":
        assert set(labels.unique().tolist()) <= {0, 1}


@settings(deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.sampled_from([1, 2, 9]),
    height=small_sizes,
    width=small_sizes,
    targets=st.lists(st.tuples(st.integers(1, 200), st.integers(1, 200)), min_size=1, max_size=3),
)
def test_post_processing_never_crashes(batch, channels, height, width, targets):
    logits = torch.randn(batch, channels, height, width)
    processor = VMUNetImageProcessor()
    target_sizes = (targets * batch)[:batch] if len(targets) >= 1 else None
    maps = processor.post_process_semantic_segmentation(logits, target_sizes=target_sizes)
    assert len(maps) == batch
    for label_map, size in zip(maps, target_sizes):
        assert tuple(label_map.shape) == size
        assert label_map.min() >= 0 and label_map.max() < max(channels, 2)
