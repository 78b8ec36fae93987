"""Checks of what enters a model, with errors that name the problem and the fix.

They run at the model entry, so that bad input never turns into a shape error deep inside a matmul.
"""

import torch


def check_pixel_values(pixel_values, num_channels, model_name, multiple=32, min_size=32):
    """Validate a (batch, channels, height, width) float tensor for a model that downsamples by ``multiple``.

    ``multiple=None`` skips the divisibility check (for models that pad the input themselves).
    """
    if pixel_values is None:
        raise ValueError(f"{model_name} needs `pixel_values`; prepare them with the model's image processor.")
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"{model_name} expects `pixel_values` as a torch.Tensor, got {type(pixel_values).__name__}. "
            "Run the image processor with return_tensors='pt'."
        )
    if pixel_values.dim() != 4:
        hint = (
            " A 3-D tensor looks like a single image or a volume: add a batch dimension with `.unsqueeze(0)`, or "
            "process a volume slice by slice."
            if pixel_values.dim() == 3
            else ""
        )
        raise ValueError(
            f"{model_name} expects `pixel_values` of shape (batch, channels, height, width), got "
            f"{tuple(pixel_values.shape)}.{hint}"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"{model_name} expects floating-point `pixel_values`, got {pixel_values.dtype}. Raw integer images must "
            "be rescaled and normalised first: use the model's image processor (or convert with `.float()` and "
            "normalise the way the model was trained)."
        )
    batch, channels, height, width = pixel_values.shape
    if batch == 0:
        raise ValueError(f"{model_name} got an empty batch (batch size 0); pass at least one image.")
    if channels != num_channels:
        raise ValueError(
            f"{model_name} expects {num_channels}-channel images (config.num_channels = {num_channels}), got "
            f"{channels} channels. Convert the images with the model's image processor (it converts gray and RGB "
            "to the model's channel count), or build the model with a matching `num_channels`."
        )
    if height < min_size or width < min_size:
        raise ValueError(
            f"{model_name} needs images of at least {min_size}x{min_size} pixels, got {height}x{width}. Resize them, "
            "for example with the model's image processor."
        )
    if multiple and (height % multiple or width % multiple):
        raise ValueError(
            f"{model_name} needs a height and width divisible by {multiple}, got {height}x{width}. Resize the images "
            f"(the image processor resizes to its `size`) or pad them to a multiple of {multiple}."
        )
    if not torch.isfinite(pixel_values).all():
        raise ValueError(
            f"{model_name} got NaN or infinite values in `pixel_values`. Check the image files and the "
            "normalisation (a constant image with per-image min-max scaling, for example, divides by zero)."
        )


def check_class_labels(labels, num_labels, model_name, ignore_index=-100):
    """Class-index labels must lie in [0, num_labels) (or equal ``ignore_index``)."""
    if labels.is_floating_point():
        return  # multi-label targets or regression values
    valid = (labels >= 0) & (labels < num_labels)
    if ignore_index is not None:
        valid |= labels == ignore_index
    if not bool(valid.all()):
        bad = labels[~valid].unique()[:5].tolist()
        raise ValueError(
            f"{model_name}: labels must be class indices in [0, {num_labels - 1}] (num_labels = {num_labels}), got "
            f"{bad}. Check the label mapping of the dataset (id2label / label2id) and config.num_labels."
        )
