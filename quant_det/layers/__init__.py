from .quant_conv import QuantConv2d, QuantLinear
from .weight_reuse import enable_weight_reuse

__all__ = ["QuantConv2d", "QuantLinear", "enable_weight_reuse"]
