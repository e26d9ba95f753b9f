"""Which convs onnxruntime runs as QLinearConv, and float weights for the others (same outputs)."""
import importlib.util
import os
from collections import Counter

import numpy as np
import pytest
import torch

from quant_det.export import prepare_export

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from quant_det.export.onnx_graph import export_module  # noqa: E402
from quant_det.export.ort_kernels import _Index, integer_kernel, store_float_weights  # noqa: E402


_spec = importlib.util.spec_from_file_location(  # pytest runs with --import-mode=importlib
    "test_export_qdq", os.path.join(os.path.dirname(__file__), "test_export_qdq.py"))
_qdq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_qdq)
tiny_net = _qdq.tiny_net


def optimized_ops(proto, tmp_path):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node], sess


def test_integer_kernel_prediction_and_float_weights_keep_outputs(tmp_path):
    # conv1 (BN folded, ReLU) -> quantizer of conv2: QLinearConv; conv2 is the graph output: float
    net = tiny_net("lsq", "lsq", 8, 8, per_channel=False)
    x = torch.randn(2, 3, 12, 12)
    em, rows = prepare_export(net)
    proto, _ = export_module(em, (x,), None, ["x"], ["y"], log_rows=rows)
    index = _Index(proto.graph)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert [integer_kernel(n, index) for n in convs] == [True, False]
    ops_before, sess = optimized_ops(proto, tmp_path)
    assert ops_before.count("QLinearConv") == 1 and ops_before.count("Conv") == 1
    y = sess.run(None, {"x": x.numpy()})[0]

    changed = store_float_weights(proto)
    assert changed == [convs[1].name]
    conv2 = [n for n in proto.graph.node if n.op_type == "Conv"][1]
    inits = {t.name: t for t in proto.graph.initializer}
    assert inits[conv2.input[1]].data_type == onnx.TensorProto.FLOAT  # weight: a float initializer
    layer = em[1]
    expected = (layer.weight_codes.float() * layer.weight_scale).numpy()  # float32(code) * scale
    assert np.array_equal(onnx.numpy_helper.to_array(inits[conv2.input[1]]), expected)
    ops, sess = optimized_ops(proto, tmp_path)
    # the same kernels (quantizers and QLinearConv stay); conv2's weight and bias DQ are gone
    assert Counter(ops_before) - Counter(ops) == Counter({"DequantizeLinear": 2})
    assert Counter(ops) - Counter(ops_before) == Counter()
    # same weights; the prepacked float kernel may sum in another order than the DQ-fed one
    np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], y, rtol=0, atol=1e-6 * np.abs(y).max())


def test_4bit_weights_are_left_alone():
    net = tiny_net("lsq", "lsq", 4, 4)
    x = torch.randn(1, 3, 12, 12)
    em, rows = prepare_export(net)
    proto, _ = export_module(em, (x,), None, ["x"], ["y"], log_rows=rows)
    assert store_float_weights(proto) == []
