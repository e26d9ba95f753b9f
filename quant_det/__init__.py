"""quant_det: low-bit quantization-aware training for detectron2's one-stage detectors.

    from quant_det import add_quant_det_config, convert_to_quantization
    model = convert_to_quantization(build_model(cfg), cfg)   # cfg has MODEL.QUANTIZATION keys
"""
from .config import add_quant_det_config, add_quantization_config
from .convert import convert_to_quantization

__all__ = ["add_quant_det_config", "add_quantization_config", "convert_to_quantization"]
