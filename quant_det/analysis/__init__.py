"""Diagnostics of quantized models: which layers hold the quantization error (`sensitivity`)."""
from .sensitivity import GROUP_RULES, group_of, layer_sensitivity, group_sensitivity

__all__ = ["GROUP_RULES", "group_of", "layer_sensitivity", "group_sensitivity"]
