"""MODEL.FPN.RELU_PLACEMENT: module structure and outputs against hand-written FPN formulas."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from quant_det.config import add_quant_det_config
from quant_det.modeling.backbone import build_quant_det_resnet_fpn_backbone
from quant_det.modeling.fpn_relu import TopDownReLUFPN, build_fpn_with_relus
from quant_det.modeling.top_block import LastLevelP6P7Norm

INPUT = ShapeSpec(channels=3)


def fpn_cfg(**fpn):
    """Return a CPU cfg for ResNet-18 + FPN on res3-res5, with MODEL.FPN overrides `fpn`."""
    cfg = add_quant_det_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    for key, value in fpn.items():
        setattr(cfg.MODEL.FPN, key, value)
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_quant_det_resnet_fpn_backbone(cfg, INPUT)


def backbone_for(placement, norm="BN", in_feature="p5", fuse_type="sum", seed=0):
    """Return the R18 FPN backbone with USE_RELU and `placement`, in eval mode, with random
    norm statistics and affine parameters so that every norm does something."""
    cfg = fpn_cfg(NORM=norm, USE_RELU=True, RELU_PLACEMENT=placement,
                  TOP_BLOCK_IN_FEATURE=in_feature, FUSE_TYPE=fuse_type)
    backbone = build(cfg, seed).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor in (module.running_mean, module.weight, module.bias):
                tensor.data = torch.randn(tensor.shape, generator=generator) * 0.5
            module.running_var.data = torch.rand(module.running_var.shape, generator=generator) + 0.5
    return backbone


def conv(module, x):
    """conv + eval-mode BN (if any) of a detectron2 Conv2d, ignoring its `activation`."""
    y = F.conv2d(x, module.weight, module.bias, module.stride, module.padding)
    norm = module.norm
    if norm is not None:
        y = F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                         training=False, eps=norm.eps)
    return y


def reference(backbone, x, placement, fuse_type="sum"):
    """The FPN formulas of quant_det/config.py (MODEL.FPN.RELU_PLACEMENT), written out by hand."""
    c = backbone.bottom_up(x)
    relu_lateral = F.relu if placement == "all_convs" else (lambda t: t)
    relu_sum = F.relu if placement == "fork" else (lambda t: t)
    relu_top_output = F.relu if placement in ("output", "all_convs") else (lambda t: t)
    scale = 0.5 if fuse_type == "avg" else 1.0

    def merge(stage, above):
        lateral = relu_lateral(conv(getattr(backbone, f"fpn_lateral{stage}"), c[f"res{stage}"]))
        return relu_sum((lateral + F.interpolate(above, scale_factor=2.0, mode="nearest")) * scale)

    m5 = relu_lateral(conv(backbone.fpn_lateral5, c["res5"]))
    m4 = merge(4, m5)
    m3 = merge(3, m4)
    p5 = relu_top_output(conv(backbone.fpn_output5, m5))
    p4 = F.relu(conv(backbone.fpn_output4, m4))
    p3 = F.relu(conv(backbone.fpn_output3, m3))
    top_in = p5 if backbone.top_block.in_feature == "p5" else c["res5"]
    p6 = F.relu(conv(backbone.top_block.p6, top_in))
    p7 = F.relu(conv(backbone.top_block.p7, p6))
    return {"p3": p3, "p4": p4, "p5": p5, "p6": p6, "p7": p7}


@pytest.mark.parametrize("placement, fuse_type, in_feature", [
    ("output", "sum", "p5"), ("fork", "sum", "p5"), ("fork", "avg", "res5"),
    ("all_convs", "sum", "p5"), ("all_convs", "sum", "res5"),
])
def test_forward_equals_the_placement_formula(placement, fuse_type, in_feature):
    backbone = backbone_for(placement, in_feature=in_feature, fuse_type=fuse_type)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, expected = backbone(x), reference(backbone, x, placement, fuse_type)
    assert list(out) == list(expected)
    for name in expected:
        torch.testing.assert_close(out[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def test_placements_differ_where_the_formulas_do():
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = {p: backbone_for(p)(x) for p in ("output", "fork", "all_convs")}
    assert out["fork"]["p5"].min() < 0  # the fork leaves the top level linear ...
    assert out["output"]["p5"].min() >= 0 and out["all_convs"]["p5"].min() >= 0
    assert all(out["fork"][k].min() >= 0 for k in ("p3", "p4", "p6", "p7"))  # ... and only it
    for name in ("p3", "p4", "p6", "p7"):  # same weights, different ReLUs => different numbers
        assert not torch.allclose(out["fork"][name], out["output"][name]), name
        assert not torch.allclose(out["all_convs"][name], out["output"][name]), name


def test_output_placement_is_the_previous_fpn_bn():
    """Default placement = what the builder did before RELU_PLACEMENT existed: detectron2's FPN
    with a ReLU activation on every output conv, and the top block with use_relu."""
    cfg = fpn_cfg(NORM="BN", USE_RELU=True, TOP_BLOCK_IN_FEATURE="p5")
    assert cfg.MODEL.FPN.RELU_PLACEMENT == "output"
    ours = build(cfg).train()
    torch.manual_seed(0)
    bottom_up = build_resnet_backbone(cfg, INPUT)
    top_block = LastLevelP6P7Norm(256, 256, in_feature="p5", norm="BN", use_relu=True)
    previous = FPN(bottom_up=bottom_up, in_features=["res3", "res4", "res5"], out_channels=256,
                   norm="BN", top_block=top_block).train()
    for output_conv in previous.output_convs:
        output_conv.activation = F.relu
    assert type(ours) is FPN
    for key, value in previous.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = torch.randn(2, 3, 64, 64)
    out, expected = ours(x), previous(x)
    for name, value in expected.items():
        assert torch.equal(out[name], value), name


def relu_convs(backbone):
    """Names of the backbone's FPN and top-block convs whose `activation` is F.relu."""
    return sorted(name for name, m in backbone.named_modules()
                  if not name.startswith("bottom_up") and getattr(m, "activation", None) is F.relu)


@pytest.mark.parametrize("placement, fpn_class, relus", [
    ("output", FPN, ["fpn_output3", "fpn_output4", "fpn_output5"]),
    ("fork", TopDownReLUFPN, ["fpn_output3", "fpn_output4"]),
    ("all_convs", FPN, ["fpn_lateral3", "fpn_lateral4", "fpn_lateral5",
                        "fpn_output3", "fpn_output4", "fpn_output5"]),
])
def test_structure_and_parameters(placement, fpn_class, relus):
    backbone = backbone_for(placement)
    assert type(backbone) is fpn_class
    assert relu_convs(backbone) == sorted(relus + ["top_block.p6", "top_block.p7"])
    # The placement adds no state: same keys, shapes and initial weights as "output".
    default = backbone_for("output").state_dict()
    assert list(backbone.state_dict()) == list(default)
    for key, value in default.items():
        assert torch.equal(backbone.state_dict()[key], value), key


@pytest.mark.parametrize("placement", ["output", "fork", "all_convs"])
@pytest.mark.parametrize("norm, norm_class", [
    ("BN", nn.BatchNorm2d), ("GN", nn.GroupNorm), ("SyncBN", nn.SyncBatchNorm), ("", type(None)),
])
def test_builds_with_every_norm(placement, norm, norm_class):
    backbone = build(fpn_cfg(NORM=norm, USE_RELU=True, RELU_PLACEMENT=placement)).eval()
    convs = [*backbone.lateral_convs, *backbone.output_convs,
             backbone.top_block.p6, backbone.top_block.p7]
    assert all(type(c.norm) is norm_class and (c.bias is None) == bool(norm) for c in convs)
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "p3": (256, 8, 8), "p4": (256, 4, 4), "p5": (256, 2, 2), "p6": (256, 1, 1), "p7": (256, 1, 1)}


@pytest.mark.parametrize("use_relu", [True, False])
def test_unknown_placement_names_key_value_and_choices(use_relu):
    cfg = fpn_cfg(USE_RELU=use_relu, RELU_PLACEMENT="sums")
    with pytest.raises(ValueError, match=r"MODEL.FPN.RELU_PLACEMENT = 'sums' is not one of "
                                         r"\('output', 'fork', 'all_convs'\)"):
        build_quant_det_resnet_fpn_backbone(cfg, INPUT)
    with pytest.raises(ValueError, match="'sums'"):
        build_fpn_with_relus("sums")


def test_without_use_relu_every_placement_is_detectron2_fpn():
    x = torch.randn(1, 3, 64, 64)
    outputs = []
    for placement in ("output", "fork", "all_convs"):
        backbone = build(fpn_cfg(NORM="BN", RELU_PLACEMENT=placement)).eval()
        assert type(backbone) is FPN and relu_convs(backbone) == []
        with torch.no_grad():
            outputs.append(backbone(x))
    for out in outputs[1:]:
        assert all(torch.equal(out[k], outputs[0][k]) for k in out)
