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
    # A traced graph (torch.export, torch.compile) cannot branch on values; eager calls check them.
    if not torch.compiler.is_compiling() and not torch.isfinite(pixel_values).all():
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


def check_segmentation_labels(labels, logits, num_labels, ignore_index, model_name):
    """Per-pixel class indices of the logits' size, in [0, num_labels) or ``ignore_index``, not all ignored.

    A binary model given upstream's raw {0, 255} masks (255 = lesion) would otherwise read the lesion as the ignore
    label and train on background alone: that case is refused with a pointer to the image processor.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{model_name}: labels must be a torch.Tensor, got {type(labels).__name__}.")
    expected = (logits.shape[0], *logits.shape[-2:])
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"{model_name}: labels of shape {tuple(labels.shape)} do not match the images: expected (batch, height, "
            f"width) = {expected}. Resize masks together with their images (the image processor does, with nearest "
            "neighbour for the masks)."
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(
            f"{model_name}: labels must be integer class indices, got {labels.dtype}. Convert masks with the image "
            "processor (segmentation_maps=...), which returns int64 labels."
        )
    values = labels.unique()
    valid = (values >= 0) & (values < num_labels)
    if ignore_index is not None:
        valid |= values == ignore_index
    if not bool(valid.all()):
        raise ValueError(
            f"{model_name}: labels contain {values[~valid][:5].tolist()}, outside the classes 0..{num_labels - 1} "
            f"and the ignore index {ignore_index}. A {{0, 255}} mask must be turned into {{0, 1}} (the image "
            "processor does this); otherwise check id2label."
        )
    if num_labels == 2 and ignore_index == 255 and 255 in values and 1 not in values:
        raise ValueError(
            f"{model_name}: these labels look like a raw {{0, 255}} mask (255 is also the ignore index, so the "
            "foreground would be ignored). Pass masks through the image processor, which maps 255 to 1."
        )
    if ignore_index is not None and bool((labels == ignore_index).all()):
        raise ValueError(
            f"{model_name}: every pixel of the batch carries the ignore index {ignore_index}; there is nothing to "
            "learn from. Check the masks and semantic_loss_ignore_index."
        )
