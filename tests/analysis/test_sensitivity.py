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


def test_calibration_for_analysis_keeps_bn_statistics():
    """The sensitivity tool calibrates a float checkpoint's quantizers with bn=False: the BatchNorm
    statistics stay the checkpoint's (else the float reference changes with the quantizers;
    with DoReFa weights, which lose the float scale, it stopped depending on the input)."""
    from quant_det.engine.calibrate import calibrate

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = QuantConv2d.from_float(nn.Conv2d(3, 4, 3, padding=1), build_quantizer("dorefa", "weight", 2),
                                               build_quantizer("pact", "act", 2))
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    torch.manual_seed(0)
    net = Net()
    net.bn.running_mean.fill_(0.25)
    net.bn.running_var.fill_(2.0)
    loader = _batches()
    calibrate(net, loader, 2, bn=False)
    assert torch.equal(net.bn.running_mean, torch.full((4,), 0.25))
    assert torch.equal(net.bn.running_var, torch.full((4,), 2.0))
    assert net.conv.input_quantizer.is_initialized() and net.training
    calibrate(net, loader, 2)  # the PTQ default re-estimates them
    assert not torch.equal(net.bn.running_var, torch.full((4,), 2.0))


def test_report_warns_about_dorefa_float_reference():
    report = {"weights": "w.pth", "num_images": 8, "groups": [],
              "layers": [{"layer": "a", "group": "a", "weight": "dorefa/2b", "act": "pact/2b", "error": 0.1}]}
    assert "not its FP32 parent" in markdown(report) and "rank" in markdown(report)
    report["layers"][0]["weight"] = "lsq/2b"
    assert "not its FP32 parent" not in markdown(report)


def test_report_with_ap_has_ap_columns():
    """With --ap the group table gains two AP columns; "all" shows the all-quantized AP in both."""
    report = {"weights": "w.pth", "num_images": 8, "ap": {"all quantized": 40.0, "all float": 50.0},
              "layers": [{"layer": "a", "group": "g", "weight": "lsq/2b", "act": "lsq/2b", "error": 0.1}],
              "groups": [{"group": "all", "layers": 1, "error_only_quantized": 0.1, "error_only_float": 0.0},
                         {"group": "g", "layers": 1, "error_only_quantized": 0.1, "error_only_float": 0.0,
                          "ap_only_quantized": 41.0, "ap_only_float": 49.0}]}
    text = markdown(report)
    assert "bbox AP: all quantized 40.0, all float 50.0." in text
    assert "| all | 1 | 0.1000 | 0.0000 | 40.0 | 40.0 |" in text
    assert "| g | 1 | 0.1000 | 0.0000 | 41.0 | 49.0 |" in text
    assert "|---|---|---|---|---|---|\n" in text
