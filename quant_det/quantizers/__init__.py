"""Fake quantizers for weights and activations, one method per module, built by name.

    from quant_det.quantizers import build_quantizer, set_calibration
    q = build_quantizer("lsq", "act", bits=4)      # Quantizer(nn.Module); q(x) is fake-quantized x

Methods: none, dorefa, pact (act), lsq, lqnet, xnor (weight), ternary (weight); see `registry.py`.
"""
# Importing a file registers its methods; this order is the order error messages list them in.
from . import none, dorefa, pact, lsq, lqnet, binary  # noqa: F401,I001
from .registry import (FLOAT_BITS, QUANTIZERS, LearnedRangeQuantizer, Quantizer, build_quantizer, check_bits,
                       methods_for, require_initialized, resolve_levels, set_calibration,
                       uninitialized_quantizers)

__all__ = ["FLOAT_BITS", "QUANTIZERS", "LearnedRangeQuantizer", "Quantizer", "build_quantizer", "check_bits",
           "methods_for", "require_initialized", "resolve_levels", "set_calibration",
           "uninitialized_quantizers"]
