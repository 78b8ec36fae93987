"""What every hf_medmamba model class shares: switching the scan backend, clear errors for unusable weight files."""

from .selective_scan import SCAN_BACKENDS
from .ss2d import SS2D


class SSMPreTrainedMixin:
    """Mixed into the ``*PreTrainedModel`` classes (before `transformers.PreTrainedModel`)."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # forward() takes **kwargs for API compatibility, not loss kwargs: the Trainer must normalise the loss itself
    accepts_loss_kwargs = False

    def set_scan_backend(self, backend):
        """Switch every SS2D of the model (and its config) to another scan backend (see `resolve_scan_backend`)."""
        if backend not in SCAN_BACKENDS:
            raise ValueError(f"Unknown scan backend {backend!r}; choose one of {', '.join(SCAN_BACKENDS)}.")
        self.config.scan_backend = backend
        for module in self.modules():
            if isinstance(module, SS2D):
                module.scan_backend = backend
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As transformers', with a clear error for a corrupt or truncated ``model.safetensors``."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            raise OSError(
                f"Could not read the weights of {str(pretrained_model_name_or_path)!r}: {err}. The safetensors file is "
                "corrupt or truncated (an interrupted download or copy, or not a safetensors file); download or "
                "convert the model again."
            ) from err
