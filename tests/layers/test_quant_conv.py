"""QuantConv2d / QuantLinear: float parity when disabled, float parameter names, real quantization."""
import torch
from detectron2.layers import Conv2d
from torch import nn

from quant_det.layers import QuantConv2d, QuantLinear
from quant_det.quantizers import build_quantizer


def _none():
    return build_quantizer("none", "weight", 8), build_quantizer("none", "act", 8)


def test_disabled_conv_is_bit_identical_to_float_conv_with_norm_and_activation():
    torch.manual_seed(0)
    conv = Conv2d(4, 6, 3, padding=1, bias=False, norm=nn.BatchNorm2d(6), activation=nn.ReLU())
    conv.eval()
    x = torch.randn(2, 4, 9, 9)
    ref = conv(x)
    q = QuantConv2d.from_float(conv, *_none()).eval()
    assert torch.equal(q(x), ref)
    assert set(q.state_dict()) == set(conv.state_dict())  # no quantizer state for "none"


def test_plain_conv_and_linear_keep_parameter_names_and_values():
    torch.manual_seed(0)
    conv, lin = nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Linear(7, 4)
    qc, ql = QuantConv2d.from_float(conv, *_none()), QuantLinear.from_float(lin, *_none())
    x, y = torch.randn(1, 3, 8, 8), torch.randn(2, 7)
    assert torch.equal(qc(x), conv(x)) and torch.equal(ql(y), lin(y))
    assert qc.weight is conv.weight and ql.bias is lin.bias
    # a float checkpoint loads strictly apart from quantizer keys
    qc.load_state_dict(conv.state_dict(), strict=True)


def test_quantized_conv_uses_quantized_weight_and_input():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 1, bias=False)
    wq = build_quantizer("dorefa", "weight", 2)
    aq = build_quantizer("dorefa", "act", 2)
    q = QuantConv2d.from_float(conv, wq, aq)
    x = torch.rand(1, 2, 4, 4) * 1.5
    ref = nn.functional.conv2d(aq(x), wq(conv.weight))
    assert torch.equal(q(x), ref)
    assert q.weight_bits == 2 and q.act_bits == 2
    assert not torch.equal(q(x), conv(x))
    # 2-bit DoReFa weights lie on at most 4 levels
    assert wq(conv.weight).unique().numel() <= 4


def test_standardized_weight_matches_the_var_mean_formula():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    with torch.no_grad():
        conv.weight.mul_(torch.arange(1.0, 5.0).view(4, 1, 1, 1)).add_(0.3)
    for per_channel in (False, True):
        wq = build_quantizer("lsq", "weight", 4, per_channel=per_channel, num_channels=4)
        q = QuantConv2d.from_float(conv, wq, build_quantizer("none", "act", 8),
                                   standardize_weight=True)
        seen = []
        q.weight_quantizer.forward = lambda w: seen.append(w) or w  # capture the quantizer's input
        q(torch.randn(1, 3, 5, 5))
        w = conv.weight.detach()
        flat = w.reshape(4, -1) if per_channel else w.reshape(1, -1)
        mean, std = flat.mean(1), flat.std(1)  # unbiased, as torch.std_mean
        ref = (flat - mean[:, None]) / std[:, None]
        torch.testing.assert_close(seen[0].reshape(flat.shape), ref)
        assert abs(seen[0].mean().item()) < 1e-6
