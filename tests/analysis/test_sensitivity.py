"""The sensitivity tool finds the layer that was made deliberately coarse."""
from collections import OrderedDict

import torch
from torch import nn

from quant_det.analysis import group_of, group_sensitivity, layer_sensitivity
from quant_det.analysis.detector import markdown, write_report
from quant_det.layers import QuantConv2d
from quant_det.quantizers import build_quantizer


def _net(coarse="b"):
    """Three 8-bit LSQ convs, except `coarse` at 2 bits; quantizers initialized on one batch."""
    torch.manual_seed(0)
    layers = {}
    for name, (cin, cout) in zip("abc", [(3, 8), (8, 8), (8, 4)]):
        bits = 2 if name == coarse else 8
        layers[name] = QuantConv2d.from_float(nn.Conv2d(cin, cout, 3, padding=1),
                                              build_quantizer("lsq", "weight", bits),
                                              build_quantizer("lsq", "act", bits))
    net = nn.Sequential(OrderedDict(layers))
    net.train()(torch.randn(4, 3, 8, 8))
    return net


def _batches():
    return [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]


def test_coarse_layer_has_the_largest_error():
    for coarse in "abc":
        rows = layer_sensitivity(_net(coarse), _batches(), lambda m, x: [m(x)])
        errors = {r["layer"]: r["error"] for r in rows}
        assert max(errors, key=errors.get) == coarse, errors
        assert errors[coarse] > 20 * min(errors.values())
        assert {r["weight"] for r in rows if r["layer"] == coarse} == {"lsq/2b"}


def test_group_rows_and_float_reference():
    net = _net("b")
    x = _batches()
    rows = group_sensitivity(net, x, lambda m, b: [m(b)])
    assert [r["group"] for r in rows] == ["all", "a", "b", "c"]
    by = {r["group"]: r for r in rows}
    # quantizing only "b" costs about as much as quantizing everything; leaving it float fixes most
    assert by["b"]["error_only_quantized"] > 0.5 * by["all"]["error_only_quantized"]
    assert by["b"]["error_only_float"] < 0.2 * by["all"]["error_only_quantized"]
    # the quantizers were restored: the model is quantized again afterwards
    q = [m for m in net.modules() if hasattr(m, "weight_quantizer")]
    assert all(type(m.weight_quantizer).__name__ == "LSQQuantizer" for m in q)


def test_detector_groups():
    assert group_of("backbone.bottom_up.stem.conv1") == "backbone stem"
    assert group_of("backbone.bottom_up.res4.1.conv2") == "backbone res4"
    assert group_of("backbone.fpn_output3") == "FPN" and group_of("backbone.top_block.p6") == "FPN"
    assert group_of("head.ctrness") == "predictors" and group_of("head.cls_subnet.2") == "head towers"


def test_report_files(tmp_path):
    net = _net("c")
    report = {"weights": "w.pth", "num_images": 8,
              "layers": layer_sensitivity(net, _batches(), lambda m, x: [m(x)]),
              "groups": group_sensitivity(net, _batches(), lambda m, x: [m(x)])}
    write_report(report, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sensitivity.json", "sensitivity.md",
                                                          "sensitivity.png"]
    text = markdown(report)
    layer_rows = text.split("| layer |")[1].splitlines()[2:]
    assert [r.split(" | ")[0] for r in layer_rows] == ["| c", "| a", "| b"]  # by decreasing error
