"""MedMamba, VMamba (v0) and VM-UNet as Hugging Face transformers models, with a selective scan that runs anywhere.

Importing the package registers the models with the transformers Auto classes (MedMamba and VMamba also as
`AutoBackbone`s for dense-prediction heads such as UperNet). The scan itself lives in
`hf_medmamba.selective_scan` (``from hf_medmamba.selective_scan import selective_scan``).
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
)

# Imported from its module: transformers 5.17 exports a torchvision-only placeholder under the top-level name.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .configuration_medmamba import MEDMAMBA_PRESETS, MedMambaConfig
from .configuration_vmamba import VMAMBA_PRESETS, VMambaConfig
from .configuration_vmunet import VMUNET_PRESETS, VMUNetConfig
from .image_processing_medmamba import MedMambaImageProcessor
from .image_processing_vmamba import VMambaImageProcessor
from .image_processing_vmunet import VMUNetImageProcessor
from .modeling_medmamba import (
    MedMambaBackbone,
    MedMambaForImageClassification,
    MedMambaModel,
    MedMambaPreTrainedModel,
)
from .modeling_vmamba import VMambaBackbone, VMambaForImageClassification, VMambaModel, VMambaPreTrainedModel
from .modeling_vmunet import VMUNetForSegmentation, VMUNetModel, VMUNetPreTrainedModel
from .scan_backends import SCAN_BACKENDS
from .selective_scan import resolve_scan_backend
from .ss2d import SS2D


__version__ = "0.1.0"

_REGISTRY = [
    (
        MedMambaConfig,
        MedMambaModel,
        AutoModelForImageClassification,
        MedMambaForImageClassification,
        MedMambaImageProcessor,
    ),
    (VMambaConfig, VMambaModel, AutoModelForImageClassification, VMambaForImageClassification, VMambaImageProcessor),
    (VMUNetConfig, VMUNetModel, AutoModelForSemanticSegmentation, VMUNetForSegmentation, VMUNetImageProcessor),
]
for _config, _base, _auto_head, _head, _processor in _REGISTRY:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    _auto_head.register(_config, _head, exist_ok=True)
    AutoImageProcessor.register(_config, image_processor_classes={"pil": _processor}, exist_ok=True)
for _config, _backbone in ((MedMambaConfig, MedMambaBackbone), (VMambaConfig, VMambaBackbone)):
    AutoBackbone.register(_config, _backbone, exist_ok=True)

__all__ = [
    "MEDMAMBA_PRESETS",
    "SCAN_BACKENDS",
    "SS2D",
    "VMAMBA_PRESETS",
    "VMUNET_PRESETS",
    "MedMambaBackbone",
    "MedMambaConfig",
    "MedMambaForImageClassification",
    "MedMambaImageProcessor",
    "MedMambaModel",
    "MedMambaPreTrainedModel",
    "VMUNetConfig",
    "VMUNetForSegmentation",
    "VMUNetImageProcessor",
    "VMUNetModel",
    "VMUNetPreTrainedModel",
    "VMambaBackbone",
    "VMambaConfig",
    "VMambaForImageClassification",
    "VMambaImageProcessor",
    "VMambaModel",
    "VMambaPreTrainedModel",
    "resolve_scan_backend",
]
