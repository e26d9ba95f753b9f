"""ONNX export with QuantizeLinear/DequantizeLinear: node kinds, containers, onnxruntime parity."""
import json

import numpy as np
import pytest
import torch
from detectron2.layers import Conv2d
from torch import nn

from quant_det.export import NotExportable, prepare_export
from quant_det.export.prepare import bn_factors
from quant_det.layers import QuantConv2d
from quant_det.quantizers import build_quantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from quant_det.export.onnx_graph import count_ops, export_module, metadata  # noqa: E402

INT4, UINT4, INT8, UINT8, INT32 = 22, 21, 3, 2, 6


def tiny_net(wmethod, amethod, wbits, abits, per_channel=False, seed=0):
    """conv(BN, ReLU) -> conv(bias): quantized, quantizers initialized, BN statistics non-trivial."""
    torch.manual_seed(seed)
    c1 = Conv2d(3, 8, 3, padding=1, bias=False, norm=nn.BatchNorm2d(8), activation=nn.ReLU())
    c2 = Conv2d(8, 4, 3, padding=1, bias=True)
    net = nn.Sequential(c1, c2)
    for name, c in list(net.named_children()):
        wq = build_quantizer(wmethod, "weight", wbits, per_channel=per_channel, num_channels=c.out_channels)
        setattr(net, name, QuantConv2d.from_float(c, wq, build_quantizer(amethod, "act", abits)))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, 12, 12))
        bn = net[0].norm
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        bn.weight[0] = -1.0  # one negative gain: its codes are negated when folded
    return net.eval()


def run_ort(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.numpy()})[0]


def export(net, x, int4=True, fold_bn=True, int_bias=True):
    em, rows = prepare_export(net, fold_bn=fold_bn, int4=int4, int_bias=int_bias)
    proto, outputs = export_module(em, (x,), None, ["x"], ["y"], int4=int4, log_rows=rows)
    with torch.no_grad():
        return em, rows, proto, em(x), net(x)


def init_types(proto):
    return {t.name: t.data_type for t in proto.graph.initializer}


def dq_input_types(proto, role):
    types = init_types(proto)
    return [types[n.input[0]] for n in proto.graph.node
            if n.op_type == "DequantizeLinear" and n.name.split(".")[-1].startswith(role)]


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_qdq_nodes_and_onnxruntime_parity(bits, per_channel):
    net = tiny_net("lsq", "lsq", bits, bits, per_channel)
    x = torch.randn(2, 3, 12, 12)
    _, rows, proto, y_export, y_torch = export(net, x, fold_bn=False, int_bias=False)
    ops = count_ops(proto)
    assert ops["QuantizeLinear"] == 2 and ops["Conv"] == 2  # one per activation quantizer
    assert not any(n.domain == "quant_det" for n in proto.graph.node)
    weight_type = INT8 if bits == 8 else INT4
    assert dq_input_types(proto, "weight_dequantize") == [weight_type, weight_type]
    stored = {t.name: len(t.raw_data) for t in proto.graph.initializer}
    assert stored["0.weight_int"] == (216 if bits == 8 else 108)  # 8x3x3x3 codes; INT4 packs two per byte
    axes = [a.i for n in proto.graph.node if n.name.endswith("weight_dequantize")
            for a in n.attribute if a.name == "axis"]
    assert axes == ([0, 0] if per_channel else [])
    opset = {i.domain: i.version for i in proto.opset_import}[""]
    assert opset == (21 if bits < 8 else 20)
    if bits == 2:  # 2-bit grids live in INT4/UINT4, clipped to their 4 levels
        assert ops["Clip"] == 2
    # onnxruntime = PyTorch (BN kept: the export form is the quantized model itself)
    np.testing.assert_allclose(y_export.numpy(), y_torch.numpy(), atol=1e-5)
    np.testing.assert_allclose(run_ort(proto, x), y_torch.numpy(), atol=1e-5)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_bn_folding_keeps_codes_and_leaves_quantized_outputs_unchanged(bits):
    """Per-tensor weights, one negative-gain channel holding the most negative code: the folded
    layer keeps the same integers with a per-channel scale s * k (negative for that channel), and
    the whole quantized net's output (after the next quantizer) does not move."""
    net = tiny_net("lsq", "lsq", bits, bits, per_channel=False)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = -100.0  # code -Qn in the negative-gain channel 0
    x = torch.randn(2, 3, 12, 12)
    em, rows, proto, y_export, y_torch = export(net, x, fold_bn=True, int_bias=False)
    assert "BatchNormalization" not in count_ops(proto)
    assert rows[0][4] == "folded (1 channels with negative scale)"
    layer, q = em[0], net[0].weight_quantizer
    original = torch.round(net[0].quantized_weight() / q.step)
    assert original[0].min().item() == -q.bounds()[0]
    assert torch.equal(layer.weight_codes.float(), original)  # the same integers
    k, _ = bn_factors(net[0].norm)
    torch.testing.assert_close(layer.weight_scale, (q.step.double() * k).float())
    assert layer.weight_scale[0].item() < 0
    tol = 1e-5 * y_torch.abs().max().item()
    assert np.abs(y_export.numpy() - y_torch.numpy()).max() <= tol
    assert np.abs(run_ort(proto, x) - y_torch.numpy()).max() <= tol


def test_8bit_bias_is_int32_with_scale_act_times_weight():
    net = tiny_net("lsq", "lsq", 8, 8, per_channel=True)
    x = torch.randn(2, 3, 12, 12)
    em, rows, proto, y_export, y_torch = export(net, x, fold_bn=True)
    assert rows[1][5].startswith("bias INT32") and rows[0][5].startswith("bias INT32")
    assert dq_input_types(proto, "bias_dequantize") == [INT32, INT32]
    layer = em[1]
    step = layer.act_scale * layer.weight_scale
    assert torch.allclose(layer.bias_scale, step)
    assert (layer.bias_codes * layer.bias_scale - net[1].bias).abs().max() <= 0.5 * step.max() + 1e-7
    np.testing.assert_allclose(run_ort(proto, x), y_export.numpy(), atol=1e-5)


def test_positive_scales_negate_codes_or_keep_bn_and_say_so():
    net = tiny_net("lsq", "lsq", 4, 4, per_channel=True)
    x = torch.randn(2, 3, 12, 12)
    em, rows = prepare_export(net, positive_scales=True)
    assert rows[0][4] == "folded (codes of 1 channels negated)" and (em[0].weight_scale > 0).all()
    with torch.no_grad():  # make channel 0 hit code -8 and give it a negative BN gain
        net[0].weight[0, 0, 0, 0] = -100.0
        net[0].norm.weight[0] = -1.0
    em, rows = prepare_export(net, positive_scales=True)
    assert rows[0][4] == ("kept: a channel with negative BN gain has code -8, whose negation "
                          "leaves INT4 (positive scales asked)")
    proto, _ = export_module(em, (x,), None, ["x"], ["y"], log_rows=rows)
    assert count_ops(proto)["BatchNormalization"] == 1
    with torch.no_grad():
        np.testing.assert_allclose(run_ort(proto, x), net(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("bits", [4, 2])
def test_no_int4_mode_uses_8bit_qdq_with_clip(bits):
    net = tiny_net("lsq", "lsq", bits, bits, per_channel=True)
    x = torch.randn(2, 3, 12, 12)
    _, rows, proto, y_export, y_torch = export(net, x, int4=False, fold_bn=False)
    ops = count_ops(proto)
    assert ops["Clip"] == 2  # Q -> Clip(int) -> DQ, brevitas' QCDQ
    assert dq_input_types(proto, "weight_dequantize") == [INT8, INT8]
    assert {i.domain: i.version for i in proto.opset_import}[""] == 17
    assert "INT8 + Clip" in rows[0][2] or "UINT8 + Clip" in rows[0][2]
    np.testing.assert_allclose(run_ort(proto, x), y_torch.numpy(), atol=1e-5)


@pytest.mark.parametrize("wmethod,amethod,wbits,abits,weight_text", [
    ("dorefa", "dorefa", 2, 2, "DQ INT4"),
    ("dorefa", "pact", 4, 4, "DQ INT8"),       # levels (2k-15)/15: codes -15..15 need INT8
    ("xnor", "pact", 1, 4, "DQ INT4"),
    ("ternary", "lsq", 2, 3, "DQ INT4"),
])
def test_uniform_grid_methods_export_as_qdq(wmethod, amethod, wbits, abits, weight_text):
    net = tiny_net(wmethod, amethod, wbits, abits, per_channel=True)
    x = torch.rand(2, 3, 12, 12) * 2 - 0.5
    _, rows, proto, y_export, y_torch = export(net, x, fold_bn=False)
    assert weight_text in rows[0][3] and "QDQ" in rows[0][2]
    assert count_ops(proto)["QuantizeLinear"] == 2
    np.testing.assert_allclose(run_ort(proto, x), y_torch.numpy(), atol=1e-5)


def test_lqnet_is_reported_as_not_qdq_not_exported_as_silent_float():
    net = tiny_net("lqnet", "lqnet", 2, 2, per_channel=False)
    x = torch.randn(2, 3, 12, 12)
    _, rows, proto, y_export, y_torch = export(net, x, fold_bn=True)
    assert rows[0][2].startswith("lqnet/2b NOT QDQ") and rows[0][3].startswith("lqnet/2b NOT QDQ")
    assert rows[0][4] == "kept: LQ-Net level set would become per-channel"
    ops = count_ops(proto)
    assert "QuantizeLinear" not in ops and ops["Where"] == 2 * 3  # 4 levels: 3 thresholds per layer
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    meta = [{p.key: p.value for p in n.metadata_props} for n in convs]
    assert [m["quant_det.layer"] for m in meta] == ["0", "1"]
    levels = json.loads(meta[0]["quant_det.weight_levels"])
    assert len(levels) == 4 and levels == sorted(levels)
    log = metadata(proto)["quant_det.export_log"]
    assert log[0][0] == "0" and "NOT QDQ" in log[0][3]
    np.testing.assert_allclose(run_ort(proto, x), y_torch.numpy(), atol=1e-5)


def test_quantizer_without_export_rule_is_an_error_naming_the_layer():
    net = tiny_net("lsq", "lsq", 4, 4)

    class Odd(nn.Module):
        method, bits = "odd", 4

        def forward(self, x):
            return x.round()

    net[1].input_quantizer = Odd()
    with pytest.raises(NotExportable, match=r"^1: activation quantizer Odd \(odd\) has no export rule"):
        prepare_export(net)


def test_float_model_bn_folding_leaves_outputs_unchanged():
    torch.manual_seed(0)
    net = nn.Sequential(
        Conv2d(3, 16, 3, padding=1, bias=False, norm=nn.BatchNorm2d(16), activation=nn.ReLU()),
        Conv2d(16, 8, 3, padding=1, bias=True, norm=nn.BatchNorm2d(8)))
    with torch.no_grad():
        for bn in (net[0].norm, net[1].norm):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.normal_()
            bn.bias.normal_()
    net.eval()
    x = torch.randn(2, 3, 10, 10)
    em, rows = prepare_export(net)
    assert [r[4] for r in rows] == ["folded", "folded"]
    with torch.no_grad():
        ref, out = net(x), em(x)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
