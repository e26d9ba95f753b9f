"""Deployment: ONNX export with real QuantizeLinear/DequantizeLinear, BN folding, onnxruntime
checks, and the size/BOPs report.

Needs the optional `export` extra (`pip install -e .[export]`: onnx, onnxruntime) for the ONNX
parts; `prepare_export` and `report` need only torch. Nothing here is imported by training.
"""
from .prepare import LOG_COLUMNS, prepare_export
from .specs import NotExportable

__all__ = ["LOG_COLUMNS", "NotExportable", "prepare_export"]
