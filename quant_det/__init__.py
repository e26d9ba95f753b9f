"""quant_det: low-bit quantization-aware training for detectron2's one-stage detectors."""
from .config import add_quant_det_config, add_quantization_config

__all__ = ["add_quant_det_config", "add_quantization_config"]
