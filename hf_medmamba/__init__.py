"""MedMamba and VM-UNet as Hugging Face transformers models, with a selective scan that runs anywhere.

Importing the package registers the models with the transformers Auto classes. The scan itself lives in
`hf_medmamba.selective_scan` (``from hf_medmamba.selective_scan import selective_scan``).
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_medmamba import MEDMAMBA_PRESETS, MedMambaConfig
from .image_processing_medmamba import MedMambaImageProcessor
from .modeling_medmamba import MedMambaForImageClassification, MedMambaModel, MedMambaPreTrainedModel
from .selective_scan import SCAN_BACKENDS, resolve_scan_backend
from .ss2d import SS2D


__version__ = "0.1.0"

AutoConfig.register(MedMambaConfig.model_type, MedMambaConfig, exist_ok=True)
AutoModel.register(MedMambaConfig, MedMambaModel, exist_ok=True)
AutoModelForImageClassification.register(MedMambaConfig, MedMambaForImageClassification, exist_ok=True)
AutoImageProcessor.register(MedMambaConfig, image_processor_classes={"pil": MedMambaImageProcessor}, exist_ok=True)

__all__ = [
    "MEDMAMBA_PRESETS",
    "SCAN_BACKENDS",
    "SS2D",
    "MedMambaConfig",
    "MedMambaForImageClassification",
    "MedMambaImageProcessor",
    "MedMambaModel",
    "MedMambaPreTrainedModel",
    "resolve_scan_backend",
]
