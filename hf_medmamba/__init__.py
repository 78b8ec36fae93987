"""MedMamba and VM-UNet as Hugging Face transformers models, with a selective scan that runs anywhere.

The scan itself lives in `hf_medmamba.selective_scan` (``from hf_medmamba.selective_scan import selective_scan``).
"""

from .selective_scan import SCAN_BACKENDS, resolve_scan_backend
from .ss2d import SS2D


__version__ = "0.1.0"

__all__ = ["SCAN_BACKENDS", "SS2D", "resolve_scan_backend"]
