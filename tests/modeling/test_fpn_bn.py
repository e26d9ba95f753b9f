"""build_quant_det_resnet_fpn_backbone: parity with detectron2's builder, P6/P7 input, FPN-BN."""
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import build_retinanet_resnet_fpn_backbone

import quant_det.modeling  # noqa: F401  (registers the builder)
from quant_det.config import add_quant_det_config
from quant_det.modeling.backbone import build_quant_det_resnet_fpn_backbone

INPUT = ShapeSpec(channels=3)


def resnet_fpn_cfg(depth=18, **fpn):
    """Return a CPU cfg for ResNet-`depth` + FPN on res3-res5, with MODEL.FPN overrides `fpn`."""
    cfg = add_quant_det_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_quant_det_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    for key, value in fpn.items():
        setattr(cfg.MODEL.FPN, key, value)
    return cfg


def build(builder, cfg, seed=0):
    torch.manual_seed(seed)
    return builder(cfg, INPUT)


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", [18, 50])
def test_default_equals_detectron2_retinanet_backbone(depth):
    cfg = resnet_fpn_cfg(depth)
    ours = build(build_quant_det_resnet_fpn_backbone, cfg).eval()
    ref = build(build_retinanet_resnet_fpn_backbone, cfg).eval()
    assert shapes(ours) == shapes(ref)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    assert ours.output_shape() == ref.output_shape()
    # Same construction order => same initial weights and bitwise-equal outputs.
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = torch.randn(1, 3, 64, 64)
    out, expected = ours(x), ref(x)
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    for name in expected:
        assert torch.equal(out[name], expected[name]), name


@pytest.mark.parametrize(
    "depth, in_feature, p6_in_channels",
    [(18, "res5", 512), (18, "p5", 256), (34, "res5", 512), (50, "res5", 2048), (50, "p5", 256)],
)
def test_top_block_input(depth, in_feature, p6_in_channels):
    cfg = resnet_fpn_cfg(depth, TOP_BLOCK_IN_FEATURE=in_feature)
    backbone = build(build_quant_det_resnet_fpn_backbone, cfg)
    assert backbone.top_block.in_feature == in_feature
    assert tuple(backbone.top_block.p6.weight.shape) == (256, p6_in_channels, 3, 3)
    strides = {k: v.stride for k, v in backbone.output_shape().items()}
    assert strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def test_top_block_input_invalid():
    cfg = resnet_fpn_cfg(18, TOP_BLOCK_IN_FEATURE="p4")
    with pytest.raises(ValueError, match=r"MODEL.FPN.TOP_BLOCK_IN_FEATURE = 'p4'.*'res5', 'p5'"):
        build_quant_det_resnet_fpn_backbone(cfg, INPUT)


def test_fpn_bn_with_relu():
    cfg = resnet_fpn_cfg(18, NORM="BN", USE_RELU=True, TOP_BLOCK_IN_FEATURE="p5")
    backbone = build(build_quant_det_resnet_fpn_backbone, cfg).train()
    normed = [*backbone.lateral_convs, *backbone.output_convs]
    normed += [backbone.top_block.p6, backbone.top_block.p7]
    assert len(normed) == 3 + 3 + 2
    for conv in normed:
        assert isinstance(conv.norm, nn.BatchNorm2d) and conv.bias is None
    for conv in [*backbone.output_convs, backbone.top_block.p6, backbone.top_block.p7]:
        assert conv.activation is torch.nn.functional.relu
    assert all(conv.activation is None for conv in backbone.lateral_convs)
    # 5 levels x (BN weight, bias, running_mean, running_var, num_batches_tracked) for outputs
    # and P6/P7, 3 for laterals; no other new state.
    bn_keys = [k for k in backbone.state_dict() if ".norm." in k and not k.startswith("bottom_up")]
    assert len(bn_keys) == 8 * 5

    out = backbone(torch.randn(2, 3, 64, 64))
    for name, feature in out.items():
        assert feature.min().item() >= 0.0, name
        assert (feature > 0).float().mean().item() > 0.2, name  # not all dead


def test_fpn_bn_without_relu_has_negative_outputs():
    cfg = resnet_fpn_cfg(18, NORM="BN", USE_RELU=False)
    backbone = build(build_quant_det_resnet_fpn_backbone, cfg).train()
    assert isinstance(backbone.top_block.p6.norm, nn.BatchNorm2d)
    out = backbone(torch.randn(2, 3, 64, 64))
    # Train-mode BN output has zero mean per channel, so each level has negative values.
    for name, feature in out.items():
        assert feature.min().item() < 0.0, name
        assert feature.mean(dim=(0, 2, 3)).abs().max().item() < 1e-4, name
