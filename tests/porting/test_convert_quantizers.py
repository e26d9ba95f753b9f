"""An original model-quantization ResNet-18 checkpoint (LSQ W2A2, synthetic) renamed with its
quantizer values converted loads into our quantized detectron2 ResNet-18, keeps the values in
training mode, and reproduces the original's forward (tests/porting/original_quant.py)."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import detectron2_resnet18
from porting import original_quant as theirs
from torch import nn
from torch.nn import functional as F

from quant_det.checkpoint.checkpointer import check_compatible
from quant_det.convert import QuantizationSpec, quantize_model
from quant_det.porting import rename_checkpoint
from quant_det.porting.quantizer_values import SourceQuantizer

torch.set_num_threads(1)
TOOL = Path(__file__).resolve().parents[2] / "tools" / "rename_checkpoint.py"
LEVELS = 4


class TheirConv(nn.Module):
    """Their custom_conv forward with LSQ-native weights per channel and unsigned LSQ inputs."""

    def __init__(self, conv, weight_clip, act_clip):
        super().__init__()
        self.conv, self.weight_clip, self.act_clip = conv, weight_clip, act_clip

    def forward(self, x):
        w = theirs.lsq(self.conv.weight, self.weight_clip, LEVELS, half_range=False, native=True)
        x = theirs.lsq(x, self.act_clip, LEVELS, half_range=True)
        return F.conv2d(x, w, None, self.conv.stride, self.conv.padding)


def their_resnet18():
    """(their model, their state dict): torchvision ResNet-18 whose residual-stage convs carry
    quant_weight / quant_activation tensors as model-quantization saves them."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    sd = dict(model.state_dict())
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.startswith("layer")]
    for i, (name, conv) in enumerate(convs):
        c = conv.out_channels
        weight_clip = 0.8 * conv.weight.detach().abs().reshape(c, -1).amax(1).reshape(c, 1, 1, 1)
        act_clip = torch.tensor([1.0 + 0.05 * i])
        for quantizer, clip in (("quant_weight", weight_clip), ("quant_activation", act_clip)):
            sd[f"{name}.{quantizer}.clip_val"] = clip
            sd[f"{name}.{quantizer}.iteration"] = torch.tensor([100.0])
            sd[f"{name}.{quantizer}.level_num"] = torch.tensor([float(LEVELS)])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, TheirConv(conv, weight_clip, act_clip))
    return model, sd


def our_resnet18():
    model = detectron2_resnet18()
    quantize_model(model, QuantizationSpec(scope=("res2", "res3", "res4", "res5"), weight_method="lsq",
                                           weight_bits=2, per_channel=True, act_method="lsq", act_bits=2))
    return model


SOURCES = {"weight": SourceQuantizer("lsq-native", 2, per_channel=True), "act": SourceQuantizer("lsq", 2)}


@torch.no_grad()
def test_converted_checkpoint_loads_and_reproduces_the_original(tmp_path):
    their_model, sd = their_resnet18()
    src, dst = tmp_path / "their.pth", tmp_path / "ours.pth"
    torch.save({"state_dict": sd}, src)
    result = rename_checkpoint(str(src), str(dst), rule_set="model-quantization-resnet",
                               quantizer_sources=SOURCES)
    assert len(result.quantizers.converted) == 2 * 19 and result.quantizers.failed == []
    renamed = dict(result.renamed)
    assert renamed["layer1.0.conv1.quant_weight.clip_val"] == "res2.0.conv1.weight_quantizer.step"
    assert renamed["layer2.0.downsample.0.quant_activation.clip_val"] == "res3.0.shortcut.input_quantizer.step"

    ours = our_resnet18().eval()
    file_sd = torch.load(dst, weights_only=True)["model"]
    check_compatible(ours.state_dict(), file_sd, str(dst))  # what QuantDetCheckpointer checks
    incompatible = ours.load_state_dict(file_sd, strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    torch.testing.assert_close(ours.res3[0].conv1.weight_quantizer.step,
                               sd["layer2.0.conv1.quant_weight.clip_val"].reshape(-1) / 2)

    x = torch.randn(2, 3, 64, 96)
    t = their_model
    expected = t.layer4(t.layer3(t.layer2(t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(x))))))))
    assert expected.abs().sum() > 0
    torch.testing.assert_close(ours(x)["res5"], expected, rtol=1e-5, atol=1e-5)

    steps = {n: p.clone() for n, p in ours.named_parameters() if n.endswith("quantizer.step")}
    ours.train()(x)  # no data-driven re-initialization over the converted values
    for n, p in ours.named_parameters():
        if n in steps:
            torch.testing.assert_close(p, steps[n])


def test_cli_reports_converted_and_not_converted_quantizers(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("rename_checkpoint_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    _, sd = their_resnet18()
    src, dst = tmp_path / "their.pth", tmp_path / "ours.pth"
    torch.save(sd, src)
    args = [str(src), str(dst), "--rules", "model-quantization-resnet", "--convert-quantizers",
            "--weight-method", "lsq", "--weight-bits", "2", "--weight-per-channel",
            "--act-method", "lsq", "--act-bits", "2"]
    assert tool.main(args) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1.quant_activation.clip_val -> res2.0.conv1.input_quantizer.step" in out
    assert "quantizer values converted (19):" in out and "quantizer values NOT converted (19;" in out
    assert "res2.0.conv1.weight_quantizer: their levels" in out and "--weight-target lqnet" in out
    file_sd = torch.load(dst, weights_only=True)["model"]
    # not converted: dropped (so the file loads into our model) and reported with the reason
    assert not any(k.startswith("res2.0.conv1.weight_quantizer.") for k in file_sd)
    assert "res2.0.conv1.input_quantizer.step" in file_sd
    assert "layer1.0.conv1.quant_weight.clip_val -> (dropped by not converted: their levels" in out

    assert tool.main([str(src), str(dst), "--force", "--rules", "model-quantization-resnet"]) == 0
    out = capsys.readouterr().out
    assert "quantizer values NOT converted (38;" in out and "--convert-quantizers --act-method" in out
    file_sd = torch.load(dst, weights_only=True)["model"]
    assert not any("_quantizer." in k for k in file_sd) and "res2.0.conv1.weight" in file_sd

    assert tool.main(args + ["--weight-target", "lqnet", "--force"]) == 0
    out = capsys.readouterr().out
    assert "quantizer values converted (38):" in out and "NOT converted" not in out
    assert "layer1.0.conv1.quant_weight.clip_val -> res2.0.conv1.weight_quantizer.basis" in out

    with pytest.raises(SystemExit):  # a method without --convert-quantizers
        tool.main([str(src), "--dry-run", "--rules", "model-quantization-resnet", "--act-method", "lsq"])
    assert "--act-method needs --convert-quantizers" in capsys.readouterr().err
