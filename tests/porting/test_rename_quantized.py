"""A torchvision ResNet converted by quantize_model renames ("torchvision-resnet") with its
quantizer state and reproduces its outputs in detectron2's ResNet quantized the same way."""
import torch
import torchvision
from conftest import detectron2_resnet18

from quant_det.convert import QuantizationSpec, quantize_model
from quant_det.porting import rename_state_dict
from quant_det.porting.rules import builtin_rules

torch.set_num_threads(1)


def w2a2(scope):
    return QuantizationSpec(scope=tuple(scope), weight_method="lsq", weight_bits=2,
                            act_method="lsq", act_bits=2, policy=(("conv1|stem.conv1", 8, 8),))


def quantized_torchvision_resnet18():
    """ResNet-18 with every conv LSQ-quantized (stem 8-bit), its quantizers initialized by one
    training-mode batch and then moved off their initial values, so the test sees real state."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=10)
    quantize_model(tv, w2a2(["conv1", "layer1", "layer2", "layer3", "layer4"]))
    tv(torch.randn(4, 3, 64, 64))
    with torch.no_grad():
        for name, p in tv.named_parameters():
            if name.endswith("_quantizer.step"):
                p.mul_(1.1)
    return tv.eval()


def test_quantizer_keys_move_with_their_conv():
    tv = quantized_torchvision_resnet18()
    sd = tv.state_dict()
    result = rename_state_dict(sd, builtin_rules("torchvision-resnet"), prefix="backbone.bottom_up.")
    renamed = dict(result.renamed)
    assert renamed["layer1.0.conv1.weight_quantizer.step"] == "backbone.bottom_up.res2.0.conv1.weight_quantizer.step"
    assert renamed["layer1.0.conv1.input_quantizer.signed"] == "backbone.bottom_up.res2.0.conv1.input_quantizer.signed"
    assert renamed["layer2.0.downsample.0.input_quantizer.step"] == "backbone.bottom_up.res3.0.shortcut.input_quantizer.step"
    assert renamed["layer4.0.downsample.0.weight_quantizer.initialized"] == \
        "backbone.bottom_up.res5.0.shortcut.weight_quantizer.initialized"
    assert renamed["conv1.weight_quantizer.step"] == "backbone.bottom_up.stem.conv1.weight_quantizer.step"
    assert result.unconverted == ["fc.weight", "fc.bias"]
    # 20 convs x 2 quantizers x (step, initialized, signed, _extra_state: the quantizer's identity)
    assert sum("_quantizer." in new for new in renamed.values()) == 20 * 2 * 4
    for old, new in result.renamed:
        assert torch.equal(result.state_dict[new], sd[old])


@torch.no_grad()
def test_renamed_quantized_resnet_reproduces_outputs_in_detectron2():
    tv = quantized_torchvision_resnet18()
    result = rename_state_dict(tv.state_dict(), builtin_rules("torchvision-resnet"))
    d2 = detectron2_resnet18()
    quantize_model(d2, w2a2(["stem", "res2", "res3", "res4", "res5"]))
    incompatible = d2.eval().load_state_dict(result.state_dict, strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert d2.res3[0].shortcut.input_quantizer.initialized.item() == 1
    torch.testing.assert_close(d2.res2[1].conv2.weight_quantizer.step, tv.layer1[1].conv2.weight_quantizer.step)

    x = torch.randn(2, 3, 64, 96)
    tv_out = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
    torch.testing.assert_close(d2(x)["res5"], tv_out, rtol=1e-5, atol=1e-5)
