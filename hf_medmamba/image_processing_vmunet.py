"""VM-UNet image processor: images and their masks, both normalisations used upstream, semantic post-processing."""

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BatchFeature

from .image_processing_common import (
    ImageInputError,
    MedicalImageProcessor,
    MedicalImagesKwargs,
    as_image_list,
    center_crop,
    output_size,
)


NORMALIZATION_MODES = ("isic", "standard")
MASK_MODES = ("binary", "index")


def check_modes(normalization_mode, mask_mode):
    if normalization_mode not in NORMALIZATION_MODES:
        raise ValueError(f"normalization_mode must be one of {NORMALIZATION_MODES}, got {normalization_mode!r}.")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}.")


class VMUNetImagesKwargs(MedicalImagesKwargs, total=False):
    r"""
    normalization_mode (`str`, *optional*):
        `"isic"`: per-image min-max to [0, 255] (upstream's ISIC `myNormalize`); `"standard"`: rescale and normalise.
    mask_mode (`str`, *optional*):
        `"binary"`: masks with values {0, 255} or {0, 1} become {0, 1}; `"index"`: masks hold class indices.
    do_reduce_labels (`bool`, *optional*):
        Index masks only: 0 becomes 255 (ignored) and every other label drops by one (transformers' convention).
    threshold (`float`, *optional*):
        Probability threshold of the one-channel (sigmoid) head in `post_process_semantic_segmentation`.
    """

    normalization_mode: str
    mask_mode: str
    do_reduce_labels: bool
    threshold: float


class VMUNetImageProcessor(MedicalImageProcessor):
    r"""
    Prepares images (and segmentation masks) for VM-UNet.

    Images: converted to `num_channels` channels (see [`MedMambaImageProcessor`] for the input rules), resized to
    256 x 256 (bilinear), then normalised in one of the two ways upstream used:

    - `normalization_mode="isic"` (default, ISIC-trained weights): `255 * (x - min) / (max - min)` per image over all
      pixels and channels, computed before resizing. Model inputs lie in [0, 255]; `image_mean`/`image_std` are not
      used (upstream's dataset constants cancel out in its min-max step).
    - `normalization_mode="standard"`: rescale by `rescale_factor` and normalise with `image_mean`/`image_std`
      (Synapse: mean 0, std 1 on [0, 1] CT slices, 1 channel).

    `window=[low, high]` (the Synapse convention: `[-125, 275]` HU) clips data that is not 8-bit (CT slices in HU as
    int16 or float arrays) to the window and scales it to [0, 1] before either normalisation; 8-bit images (the bundled
    PNG slices, already windowed) pass as they are. It is saved in `preprocessor_config.json`; `do_window=False` skips
    it for one call.

    Upstream resized tensors with bilinear interpolation without antialiasing; this processor uses PIL's
    (antialiased) filters, so strongly downscaled inputs come out slightly smoother.

    Masks (`segmentation_maps`): single-channel PIL images, arrays or tensors, resized with nearest neighbour and
    returned as int64 `labels`. `mask_mode="binary"` accepts {0, 255} (upstream's ISIC masks) or {0, 1} and returns
    {0, 1}; any other value raises. `mask_mode="index"` keeps class indices (with `do_reduce_labels` if asked).

    `post_process_semantic_segmentation` turns logits into label maps: sigmoid >= `threshold` for the one-channel
    head, argmax otherwise, after resizing the logits to each `target_sizes` entry.
    """

    _auto_class = "AutoImageProcessor"
    valid_kwargs = VMUNetImagesKwargs
    model_input_names = ["pixel_values"]
    size = {"height": 256, "width": 256}
    normalization_mode = "isic"
    image_mean = [0.0, 0.0, 0.0]
    image_std = [1.0, 1.0, 1.0]
    mask_mode = "binary"
    do_reduce_labels = False
    threshold = 0.5

    def __init__(self, **kwargs):
        if kwargs.get("num_channels", self.num_channels) == 1:
            kwargs.setdefault("image_mean", [0.0])
            kwargs.setdefault("image_std", [1.0])
        super().__init__(**kwargs)
        check_modes(self.normalization_mode, self.mask_mode)

    @classmethod
    def for_model(cls, config, normalization_mode=None, mask_mode=None, image_size=None):
        """The processor for a VM-UNet config: binary (sigmoid) heads get upstream's ISIC setting (min-max to
        [0, 255], {0, 255} masks, 256 x 256), multi-class heads the Synapse setting (standard normalisation, index
        masks, 224 x 224). Each choice can be overridden."""
        binary = config.sigmoid_head
        size = image_size or (256 if binary else 224)
        return cls(
            num_channels=config.num_channels,
            normalization_mode=normalization_mode or ("isic" if binary else "standard"),
            mask_mode=mask_mode or ("binary" if binary else "index"),
            size={"height": size, "width": size},
        )

    def preprocess(self, images, segmentation_maps=None, **kwargs):
        """Images (and optionally their masks) to `pixel_values` (and `labels`)."""
        return super().preprocess(images, segmentation_maps, **kwargs)

    def adjust_intensity(self, array, is_8bit, normalization_mode=None, **kwargs):
        if normalization_mode != "isic":
            return array, is_8bit
        low, high = float(array.min()), float(array.max())
        if high <= low:
            raise ImageInputError(
                "a constant image cannot be min-max normalised (normalization_mode='isic' divides by max - min)."
            )
        return (array - low) * (255.0 / (high - low)), False

    def normalize_image(self, array, normalization_mode=None, **kwargs):
        if normalization_mode == "isic":
            return array.astype(np.float32)
        return super().normalize_image(array, **kwargs)

    def _preprocess_image_like_inputs(self, images, segmentation_maps=None, *args, return_tensors=None, **kwargs):
        check_modes(kwargs["normalization_mode"], kwargs["mask_mode"])
        images = as_image_list(images)
        data = {"pixel_values": [self.process_one(image, **kwargs) for image in images]}
        if segmentation_maps is not None:
            masks = as_image_list(segmentation_maps)
            if len(masks) != len(images):
                raise ValueError(f"got {len(images)} images but {len(masks)} segmentation maps; pass one per image.")
            data["labels"] = [
                self.process_mask(mask, image.shape[1:], **kwargs) for mask, image in zip(masks, data["pixel_values"])
            ]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def process_mask(
        self,
        mask,
        image_shape,
        mask_mode,
        do_reduce_labels,
        do_resize,
        size,
        do_center_crop=None,
        crop_size=None,
        **kwargs,
    ):
        """A mask as an int64 (H, W) array of class indices, resized (nearest) and cropped like its image."""
        if isinstance(mask, PIL.Image.Image):
            if mask.mode not in ("1", "L", "P", "I", "I;16"):
                raise ImageInputError(f"masks must be single-channel images (mode L, P or I), got mode {mask.mode}.")
            array = np.array(mask)
        else:
            array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
            array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
        if array.ndim != 2:
            raise ImageInputError(f"a mask must be 2-D (height, width), got shape {tuple(array.shape)}.")
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
            raise ImageInputError("masks must hold integer class values; got non-integer floats.")
        values = np.unique(array)
        if mask_mode == "binary":
            if set(values.tolist()) <= {0, 255}:
                array = (array == 255).astype(np.int64)
            elif set(values.tolist()) <= {0, 1}:
                array = array.astype(np.int64)
            else:
                raise ImageInputError(
                    f"a binary mask must contain only {{0, 255}} or {{0, 1}}, got values {values[:8].tolist()}. "
                    "For class-index masks use mask_mode='index'; threshold soft or JPEG masks first."
                )
        else:
            if values.size and values.min() < 0:
                raise ImageInputError(f"class-index masks must be non-negative, got {values[:8].tolist()}.")
            array = array.astype(np.int64)
            if do_reduce_labels:
                array = np.where(array == 0, 255, array - 1)
        if do_resize:
            height, width = output_size(array.shape, size)
            resized = PIL.Image.fromarray(array.astype(np.int32)).resize((width, height), PIL.Image.NEAREST)
            array = np.asarray(resized, dtype=np.int64)
        if do_center_crop:
            array = center_crop(array[None], crop_size.height, crop_size.width)[0]
        if array.shape != tuple(image_shape):
            raise ImageInputError(
                f"mask of size {array.shape} does not match its image of size {tuple(image_shape)}; pass each mask "
                "with the image it belongs to (same height and width)."
            )
        return array

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, threshold=None):
        """Label maps (height, width) from the logits, one per image, resized to `target_sizes` when given."""
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        threshold = self.threshold if threshold is None else threshold
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(f"got {len(target_sizes)} target sizes for {len(logits)} images; pass one per image.")
        maps = []
        for i, image_logits in enumerate(logits):
            image_logits = image_logits[None].float()
            if target_sizes is not None:
                size = tuple(int(s) for s in target_sizes[i])
                image_logits = F.interpolate(image_logits, size=size, mode="bilinear", align_corners=False)
            if image_logits.shape[1] == 1:
                maps.append((torch.sigmoid(image_logits[0, 0]) >= threshold).long())
            else:
                maps.append(image_logits[0].argmax(dim=0))
        return maps


__all__ = ["VMUNetImageProcessor"]
