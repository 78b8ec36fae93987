"""VMamba (v0) image processor: the Swin-style ImageNet evaluation transform VMamba was evaluated with."""

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .image_processing_common import MedicalImageProcessor


class VMambaImageProcessor(MedicalImageProcessor):
    r"""
    VMamba's ImageNet evaluation transform (VMamba ``classification/data/build.py`` with its Swin defaults): resize
    the shorter side to 256 (bicubic), centre-crop 224 x 224, rescale by 1/255, normalise with the ImageNet mean and
    std. Inputs are converted as by [`MedMambaImageProcessor`] (PIL, NumPy or torch; gray or colour; 16-bit and
    float data brought to the 8-bit scale).
    """

    _auto_class = "AutoImageProcessor"
    size = {"shortest_edge": 256}
    resample = PILImageResampling.BICUBIC
    do_center_crop = True
    crop_size = {"height": 224, "width": 224}
    image_mean = list(IMAGENET_DEFAULT_MEAN)
    image_std = list(IMAGENET_DEFAULT_STD)

    @classmethod
    def for_model(cls, config):
        """The processor for a VMamba config: the ImageNet evaluation transform with the config's channel count."""
        return cls(num_channels=config.num_channels)


__all__ = ["VMambaImageProcessor"]
