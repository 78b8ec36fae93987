"""What the image processors share: turning any image input into a float (channels, height, width) array with the
model's channel count, resizing it, and the processor base class.

Only PIL and NumPy are used (no torchvision), as transformers' own PIL backend. The input rules (also in the README):

- PIL images: 8-bit modes as they are; palette, CMYK and other colour modes converted to RGB; alpha dropped;
  16/32-bit integer modes (``I;16``, ``I``) and float mode ``F`` follow the array rules below.
- Arrays and tensors: (H, W), (C, H, W) or (H, W, C) with C in {1, 3, 4}. ``uint8`` is used as it is; ``bool`` maps
  to {0, 255}; other integer types whose values fit in 0..255 are used as they are, wider ranges are stretched per
  image to 0..255 (min-max); floats within [0, 1] are multiplied by 255, other floats are stretched per image.
  A 3-D array whose first and last axes are both not 1, 3 or 4 is refused as a probable volume.
- Window: with ``window = (low, high)`` set, data that is not 8-bit (integer types wider than 8 bits, floats: values in
  modality units such as CT Hounsfield units) is clipped to [low, high] and scaled to 0..255 instead of being
  stretched per image, whatever its values. 8-bit data (``uint8``, ``bool``, 8-bit PIL modes) is a display image,
  already windowed, and passes as it is. Pipelines convert every input to 8-bit RGB (transformers' ``load_image``), so
  a window reaches only data given to the processor directly (arrays, tensors, 16-bit and float PIL images).
- Channels: with ``convert`` the image is brought to the model's channel count (gray is repeated to RGB; RGB becomes
  gray with ITU-R 601 luma weights, as PIL's ``convert("L")``). Without it the channel count must already match.

Values stay on the 8-bit scale (0..255) so that ``rescale_factor = 1/255`` and the usual normalisations apply.
"""

import numpy as np
import PIL.Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CHANNEL_COUNTS = (1, 3, 4)


class ImageInputError(ValueError):
    """An image that the processor cannot interpret; the message says what was found and what to pass instead."""


def _stretch(array):
    """Per-image min-max to 0..255 (a constant image becomes 0)."""
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros_like(array)
    return (array - low) * (255.0 / (high - low))


def check_window(window):
    """``window`` as a (low, high) pair of floats with low < high, or an error that says what to pass."""
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a pair (low, high) of numbers, got {window!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"window must be finite with low < high (for CT in HU e.g. (-125, 275)), got {window!r}.")
    return low, high


def apply_window(array, window):
    """Clip to ``window = (low, high)`` and scale to [0, 1] (float32)."""
    low, high = check_window(window)
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ImageInputError("the image contains NaN or infinite values; clean the data before processing.")
    return np.clip((array.astype(np.float32) - np.float32(low)) / np.float32(high - low), 0.0, 1.0)


def _to_8bit_scale(array, window=None):
    """Bring an array's values to the 8-bit scale (windowed when ``window`` is given and the data is not 8-bit);
    returns (float32 array, whether it was exactly 8-bit data)."""
    if array.dtype == np.uint8:
        return array.astype(np.float32), True
    if array.dtype == np.bool_:
        return array.astype(np.float32) * 255.0, True
    if window is not None:
        return apply_window(array, window) * np.float32(255.0), False
    if np.issubdtype(array.dtype, np.integer):
        if array.size and array.min() >= 0 and array.max() <= 255:
            return array.astype(np.float32), True
        return _stretch(array), False
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageInputError("the image contains NaN or infinite values; clean the data before processing.")
        if array.size and array.min() >= 0.0 and array.max() <= 1.0:
            return array.astype(np.float32) * 255.0, False
        return _stretch(array), False
    raise ImageInputError(f"unsupported image dtype {array.dtype}; pass uint8, integer, bool or float data.")


def pil_to_array(image):
    """A PIL image as an (H, W) or (H, W, C) array, colour modes converted to RGB and alpha dropped."""
    mode = image.mode
    if mode in ("L", "RGB", "I", "F") or mode.startswith("I;16"):
        array = np.array(image)
    elif mode in ("1", "LA"):
        array = np.array(image.convert("L"))
    else:  # P, PA, RGBA, CMYK, YCbCr, LAB, HSV, RGBX, ...
        array = np.array(image.convert("RGB"))
    if array.dtype.byteorder == ">":  # I;16B
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def to_channels_first(image):
    """Any supported image as a (C, H, W) array of its original dtype, alpha dropped."""
    if isinstance(image, PIL.Image.Image):
        array = pil_to_array(image)
    elif hasattr(image, "detach") and hasattr(image, "cpu"):  # torch.Tensor, without importing torch here
        array = (
            image.detach().cpu().float().numpy()
            if str(image.dtype) == "torch.bfloat16"
            else image.detach().cpu().numpy()
        )
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ImageInputError(
            f"unsupported image type {type(image).__name__}; pass a PIL image, a NumPy array or a torch tensor."
        )
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ImageInputError(
            f"expected a 2-D image (H, W) or (C, H, W) / (H, W, C) with 1, 3 or 4 channels, got an array of shape "
            f"{tuple(array.shape)}. Pass 2-D slices of a volume one at a time."
        )
    if isinstance(image, PIL.Image.Image) or (
        array.shape[-1] in _CHANNEL_COUNTS and array.shape[0] not in _CHANNEL_COUNTS
    ):
        array = np.moveaxis(array, -1, 0)
    elif array.shape[0] not in _CHANNEL_COUNTS:
        raise ImageInputError(
            f"an array of shape {tuple(array.shape)} has neither 1, 3 or 4 channels first nor last; it looks like a "
            "3-D volume. Pass its 2-D slices one at a time (the prediction CLI does this for NIfTI files)."
        )
    if array.shape[0] == 4:
        array = array[:3]  # RGBA -> RGB
    if min(array.shape[1:]) < 1:
        raise ImageInputError(f"the image is empty (shape {tuple(array.shape)}).")
    return array


def convert_channels(array, num_channels, convert):
    """(C, H, W) float array with ``num_channels`` channels (gray <-> RGB) or an error when ``convert`` is off."""
    channels = array.shape[0]
    if channels == num_channels:
        return array
    if not convert:
        raise ImageInputError(
            f"the image has {channels} channel(s) but the model expects {num_channels}; set do_convert_rgb=True to "
            "convert gray and RGB images to the model's channel count."
        )
    if channels == 1 and num_channels == 3:
        return np.repeat(array, 3, axis=0)
    if channels == 3 and num_channels == 1:
        return np.tensordot(_LUMA, array, axes=1)[None].astype(np.float32)
    raise ImageInputError(f"cannot convert a {channels}-channel image to {num_channels} channels.")


def to_model_array(image, num_channels, convert=True, window=None):
    """An image as a (num_channels, H, W) float32 array on the 8-bit scale, and whether it was 8-bit data; data that
    is not 8-bit is windowed to ``window`` when one is given (see the module docstring)."""
    array, is_8bit = _to_8bit_scale(to_channels_first(image), window)
    return convert_channels(array, num_channels, convert), is_8bit


def resize_array(array, height, width, resample, exact_8bit):
    """Resize each channel with PIL: in 8-bit mode when the data is 8-bit (as torchvision's PIL path does), in
    32-bit float mode otherwise (no quantisation of 16-bit or float sources)."""
    if array.shape[1:] == (height, width):
        return array
    channels = []
    for channel in array:
        if exact_8bit:
            img = PIL.Image.fromarray(np.clip(np.rint(channel), 0, 255).astype(np.uint8))  # mode L
        else:
            img = PIL.Image.fromarray(channel.astype(np.float32))  # mode F
        channels.append(np.asarray(img.resize((width, height), resample=resample), dtype=np.float32))
    return np.stack(channels)


def output_size(shape, size):
    """(height, width) after resizing ``shape`` to ``size``: exact height/width, or the shortest edge scaled to
    ``size.shortest_edge`` with the longer one truncated, as torchvision's ``Resize(int)``."""
    height, width = shape
    if size.height and size.width:
        return size.height, size.width
    if size.shortest_edge:
        short, long = sorted((height, width))
        new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    raise ValueError(f"size must have 'height' and 'width' or 'shortest_edge', got {dict(size)}.")


def center_crop(array, height, width):
    """Central (height, width) window of a (C, H, W) array, offsets rounded as torchvision's ``CenterCrop``."""
    h, w = array.shape[1:]
    if height > h or width > w:
        raise ImageInputError(f"cannot centre-crop {height}x{width} out of a {h}x{w} image; resize it first.")
    top, left = round((h - height) / 2), round((w - width) / 2)
    return array[:, top : top + height, left : left + width]


def as_image_list(images):
    """A single image, a list of images, or a 4-D batch array/tensor (N, C, H, W) or (N, H, W, C) as a list."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageInputError("got an empty list of images; pass at least one image.")
        return list(images)
    if getattr(images, "ndim", None) == 4:
        return list(images)
    return [images]


class MedicalImagesKwargs(ImagesKwargs, total=False):
    r"""
    num_channels (`int`, *optional*):
        Channel count of the model's input (1 gray, 3 RGB). With `do_convert_rgb` every image is converted to it.
    window (`list[float]`, *optional*):
        Intensity window `[low, high]` in the units of the data (CT: Hounsfield units, e.g. `[-125, 275]`): data that
        is not 8-bit is clipped to it and scaled to [0, 1] before rescaling and normalisation.
    do_window (`bool`, *optional*):
        Whether to apply `window` (when one is set).
    """

    num_channels: int
    window: list[int | float] | tuple[int | float, int | float] | None
    do_window: bool


class MedicalImageProcessor(PilBackend):
    """Base of the hf_medmamba image processors: conversion to the model's channel count, resize, rescale, normalise.

    Subclasses set the defaults and may override `normalize_image` (a (C, H, W) float array on the 8-bit scale in,
    model input out) and `_preprocess_image_like_inputs` for extra inputs such as segmentation maps.
    """

    valid_kwargs = MedicalImagesKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    num_channels = 3
    window = None
    do_window = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.window is not None:
            self.window = list(check_window(self.window))

    def prepare_image(
        self,
        image,
        num_channels,
        do_convert_rgb,
        do_resize,
        size,
        resample,
        do_center_crop=None,
        crop_size=None,
        window=None,
        do_window=None,
        **kwargs,
    ):
        """One image as a (num_channels, H, W) float array on the 8-bit scale, windowed, resized and cropped if
        asked."""
        window = window if do_window else None
        array, is_8bit = to_model_array(image, num_channels, convert=do_convert_rgb, window=window)
        array, is_8bit = self.adjust_intensity(array, is_8bit, **kwargs)
        if do_resize:
            array = resize_array(array, *output_size(array.shape[1:], size), resample, exact_8bit=is_8bit)
        if do_center_crop:
            array = center_crop(array, crop_size.height, crop_size.width)
        return array

    def adjust_intensity(self, array, is_8bit, **kwargs):
        """Hook before resizing (the ISIC min-max mode of VM-UNet); returns the array and whether it is 8-bit data."""
        return array, is_8bit

    def normalize_image(self, array, do_rescale, rescale_factor, do_normalize, image_mean, image_std, **kwargs):
        if do_rescale:
            array = array * np.float32(rescale_factor)
        if do_normalize:
            mean, std = (np.asarray(v, dtype=np.float32).reshape(-1, 1, 1) for v in (image_mean, image_std))
            if mean.shape[0] not in (1, array.shape[0]) or std.shape[0] not in (1, array.shape[0]):
                raise ValueError(
                    f"image_mean / image_std have {mean.shape[0]} / {std.shape[0]} values but the images have "
                    f"{array.shape[0]} channels; give one value per channel or a single value."
                )
            array = (array - mean) / std
        return array.astype(np.float32)

    def _preprocess_image_like_inputs(self, images, *args, return_tensors=None, **kwargs):
        pixel_values = [self.process_one(image, **kwargs) for image in as_image_list(images)]
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def process_one(self, image, **kwargs):
        try:
            array = self.prepare_image(image, **kwargs)
        except ImageInputError as err:
            raise ImageInputError(f"{type(self).__name__}: {err}") from None
        return self.normalize_image(array, **kwargs)
