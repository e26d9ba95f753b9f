"""quant_det: low-bit quantization-aware training of one-stage detectors on stock detectron2.

detectron2 itself is not on PyPI and is therefore not listed in install_requires: `make install`
builds it (third_party/detectron2/build_wheel.py) or uses one you already have.
"""
from setuptools import find_packages, setup

setup(
    name="quant_det",
    version="0.1.0",
    description="Low-bit QAT (DoReFa, PACT, LSQ, LQ-Net, XNOR) for RetinaNet/FCOS on detectron2",
    packages=find_packages(include=["quant_det", "quant_det.*"]),
    python_requires=">=3.8",
    install_requires=[
        "torch>=1.10",
        "torchvision",
        "fvcore",
        "pycocotools>=2.0.2",
        "scikit-learn",  # ships the UCI digits and two photos that digits-det is built from
        "tabulate",
        "matplotlib",
    ],
    package_data={"quant_det.quantizers": ["*.c"]},  # the LQ-Net kernel, built on first use
    extras_require={
        "test": ["pytest>=7.3"],
        # ONNX export with QuantizeLinear/DequantizeLinear (INT4 needs opset 21) and its checks in
        # onnxruntime: tools/export_onnx.py, benchmarks/bench_onnx_speed.py. Training never imports them.
        "export": ["onnx>=1.16", "onnxruntime>=1.20"],
        # peer QAT libraries for benchmarks/bench_peers.py (each optional there); install with
        # `pip install -e .[bench] -c constraints` to keep your torch/torchvision/numpy
        "bench": ["torchao>=0.18", "brevitas>=0.13", "nncf>=3.4"],
    },
)
