from .quant_conv import QuantConv2d, QuantLinear

__all__ = ["QuantConv2d", "QuantLinear"]
