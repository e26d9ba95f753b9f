"""A converted RetinaNet quantizes each layer's weight once per forward although its head convs
run once per FPN level (layers/weight_reuse.py), with the same losses as recomputing per call."""
import copy

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import make_batch
from quant_det.convert import convert_to_quantization
from quant_det.layers import QuantConv2d

DOREFA = ["MODEL.QUANTIZATION.SCOPE", ["backbone", "head"],
          "MODEL.QUANTIZATION.WEIGHT.METHOD", "dorefa", "MODEL.QUANTIZATION.ACT.METHOD", "pact"]


def weight_quantizer_calls(model):
    """{layer name: number of weight-quantizer calls}, counted from now on."""
    calls = {}
    for name, layer in model.named_modules():
        if isinstance(layer, QuantConv2d):
            calls[name] = 0
            layer.weight_quantizer.register_forward_hook(
                lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    return calls


def test_retinanet_head_convs_quantize_their_weight_once_per_forward(cfg_loader):
    cfg = cfg_loader("configs/digits/retinanet_R_18_FPN.yaml", *DOREFA)
    torch.manual_seed(0)
    reuse = convert_to_quantization(build_model(cfg), cfg).train()
    plain = copy.deepcopy(reuse)
    plain.reuse_quantized_weights = False
    batch = make_batch(num_images=1, size=64)
    reuse_calls, plain_calls = weight_quantizer_calls(reuse), weight_quantizer_calls(plain)
    with EventStorage(0):
        reused, recomputed = reuse(batch), plain(batch)
    assert set(reuse_calls.values()) == {1} and "head.cls_subnet.0" in reuse_calls
    assert plain_calls["head.cls_subnet.0"] == plain_calls["head.bbox_pred"] == 5  # per FPN level
    assert {k: v.item() for k, v in reused.items()} == {k: v.item() for k, v in recomputed.items()}
    sum(reused.values()).backward()
    sum(recomputed.values()).backward()
    for (name, a), b in zip(reuse.named_parameters(), plain.parameters()):
        if a.grad is not None:
            scale = a.grad.abs().max().item()
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
