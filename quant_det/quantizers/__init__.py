"""Fake quantizers for weights and activations, one method per module, built by name.

    from quant_det.quantizers import build_quantizer, set_calibration
    q = build_quantizer("lsq", "act", bits=4)      # Quantizer(nn.Module); q(x) is fake-quantized x

Methods: none, dorefa, pact (act), lsq, lqnet, xnor (weight), ternary (weight); see `registry.py`.
"""
from . import binary, dorefa, lqnet, lsq, none, pact  # noqa: F401  (register the methods)
from .registry import QUANTIZERS, LearnedRangeQuantizer, Quantizer, build_quantizer, set_calibration

__all__ = ["QUANTIZERS", "LearnedRangeQuantizer", "Quantizer", "build_quantizer", "set_calibration"]
