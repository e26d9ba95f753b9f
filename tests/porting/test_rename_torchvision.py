"""torchvision ResNets renamed by "torchvision-resnet" load into detectron2's ResNet exactly."""
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from quant_det.porting import rename_checkpoint, rename_state_dict
from quant_det.porting.rules import builtin_rules

torch.set_num_threads(1)


def d2_resnet(depth: int, norm: str):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def randomize_bn_stats(model):
    """Non-trivial running stats and affine params, so parity checks that they were copied."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("depth,norm", [(18, "BN"), (34, "FrozenBN"), (50, "BN"), (50, "FrozenBN")])
@torch.no_grad()
def test_res5_matches_torchvision_layer4(depth, norm):
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    randomize_bn_stats(tv)
    result = rename_state_dict(tv.state_dict(), builtin_rules("torchvision-resnet"))
    assert result.unconverted == ["fc.weight", "fc.bias"]
    assert all(old.endswith("num_batches_tracked") for old, _ in result.dropped)

    d2 = d2_resnet(depth, norm).eval()
    incompatible = d2.load_state_dict(result.state_dict, strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    if norm == "FrozenBN":
        assert isinstance(d2.stem.conv1.norm, FrozenBatchNorm2d)

    x = torch.randn(2, 3, 64, 96)
    tv_out = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
    torch.testing.assert_close(d2(x)["res5"], tv_out, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_written_file_loads_through_detection_checkpointer_with_prefix(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    src, dst = tmp_path / "r18.pth", tmp_path / "r18_d2.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, src)
    result = rename_checkpoint(str(src), str(dst), rule_set="torchvision-resnet",
                               prefix="backbone.bottom_up.")
    assert ("layer3.1.downsample.0.weight" not in dict(result.renamed))
    assert dict(result.renamed)["layer3.0.downsample.0.weight"] == "backbone.bottom_up.res4.0.shortcut.weight"

    saved = torch.load(dst, weights_only=True)
    assert saved["__author__"] == "quant_det rename_checkpoint" and saved["matching_heuristics"] is False
    assert all(isinstance(v, torch.Tensor) for v in saved["model"].values())

    holder = torch.nn.Module()
    holder.backbone = torch.nn.Module()
    holder.backbone.bottom_up = d2_resnet(18, "FrozenBN")
    checkpointer = DetectionCheckpointer(holder)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(dst)))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    torch.testing.assert_close(holder.backbone.bottom_up.res5[1].conv2.weight, tv.layer4[1].conv2.weight)
