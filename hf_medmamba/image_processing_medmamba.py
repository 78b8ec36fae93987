"""MedMamba image processor (PIL backend, no torchvision)."""

from .image_processing_common import MedicalImageProcessor


class MedMambaImageProcessor(MedicalImageProcessor):
    r"""
    Prepares images for MedMamba the way upstream evaluates: resize to 224 x 224 (bilinear), rescale by 1/255 and
    normalise with mean = std = 0.5 (to [-1, 1]).

    Accepts PIL images, NumPy arrays and torch tensors, gray or colour, one at a time or in a list / 4-D batch.
    Every image is converted to `num_channels` channels (gray for a 1-channel model, RGB for a 3-channel one) when
    `do_convert_rgb` is set (the default). 16-bit images and float arrays are brought to the 8-bit scale first (see
    `hf_medmamba.image_processing_common`): integers wider than 8 bits and floats outside [0, 1] are min-max
    stretched per image, floats within [0, 1] are multiplied by 255.

    Args:
        do_resize (`bool`, defaults to `True`), size (`dict`, defaults to `{"height": 224, "width": 224}`),
        resample (defaults to `PILImageResampling.BILINEAR`):
            Resizing (exactly; no aspect-ratio preservation, as upstream's `Resize((224, 224))`).
        do_rescale (`bool`, defaults to `True`), rescale_factor (`float`, defaults to 1/255):
            Scaling of the 8-bit values.
        do_normalize (`bool`, defaults to `True`), image_mean / image_std (defaults to 0.5 / 0.5):
            Per-channel normalisation `(x - mean) / std`; one value per channel or a single value.
        do_convert_rgb (`bool`, defaults to `True`):
            Convert every image to `num_channels` channels.
        num_channels (`int`, defaults to 3):
            The model's `config.num_channels`.
        window (`list[float]`, *optional*), do_window (`bool`, defaults to `True`):
            Intensity window `[low, high]` in the data's units (CT: Hounsfield units): data that is not 8-bit is
            clipped to it and scaled to [0, 1] instead of being stretched per image; 8-bit images pass as they are.
            Saved in `preprocessor_config.json`.
    """

    _auto_class = "AutoImageProcessor"
    size = {"height": 224, "width": 224}
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]

    def __init__(self, **kwargs):
        if kwargs.get("num_channels", self.num_channels) == 1:
            kwargs.setdefault("image_mean", [0.5])
            kwargs.setdefault("image_std", [0.5])
        super().__init__(**kwargs)

    @classmethod
    def for_model(cls, config, image_size=None):
        """The processor for a MedMamba config: its channel count, resized to ``image_size`` (default 224) square."""
        size = image_size or 224
        return cls(num_channels=config.num_channels, size={"height": size, "width": size})


__all__ = ["MedMambaImageProcessor"]
