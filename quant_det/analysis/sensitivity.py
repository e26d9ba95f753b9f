"""What quantizing each layer (or group of layers) costs, measured against the same model in float.

The model is a quantized one (QuantConv2d/QuantLinear layers, quantizers already initialized, e.g.
a QAT checkpoint). A layer is "float" while its two quantizers are bypassed (`float_layers`), so
one model serves every comparison and the float reference uses exactly the trained weights:

* `layer_sensitivity`: for each quantized layer, the output error with only that layer quantized;
* `group_sensitivity`: for each group of layers (`group_of`: backbone stem/stages, FPN, head
  towers, predictors), the error with only that group quantized and with only that group float.

The error of a quantized run against the float run over the same batches is, per output (e.g. a
dense head's class logits, box deltas, centerness), sum ||y_q - y_f||^2 / sum ||y_f||^2, averaged
over the outputs: 0 when quantization changes nothing, ~1 when the signal is lost.

Example (tiny, no detectron2):
    net = nn.Sequential(QuantConv2d.from_float(...), ...)
    rows = layer_sensitivity(net, [torch.randn(4, 3, 8, 8)], lambda m, x: [m(x)])
"""
import contextlib
import re
from typing import Callable, Dict, Iterable, List, Sequence

import torch
from torch import nn

from ..layers import QuantConv2d, QuantLinear

# (regex on the module name, group); the first match wins. Names are detectron2's RetinaNet/FCOS.
GROUP_RULES = (
    (r"backbone\.bottom_up\.stem\..*", "backbone stem"),
    (r"backbone\.bottom_up\.(res\d)\..*", r"backbone \1"),
    (r"backbone\.(fpn_|top_block).*", "FPN"),
    (r"head\.(cls_score|bbox_pred|ctrness)", "predictors"),
    (r"head\..*", "head towers"),
)


def group_of(name: str) -> str:
    """The group of a layer name by GROUP_RULES, else its first name component (e.g. "backbone
    res3" for "backbone.bottom_up.res3.0.conv1", "predictors" for "head.cls_score")."""
    for pattern, group in GROUP_RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return match.expand(group)
    return name.split(".")[0]


def quantized_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """{name: layer} of the model's QuantConv2d/QuantLinear layers, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


@contextlib.contextmanager
def float_layers(model: nn.Module, names: Iterable[str]):
    """Within the block, the named quantized layers run in float (both quantizers bypassed)."""
    layers = quantized_layers(model)
    saved = {}
    try:
        for name in names:
            layer = layers[name]
            saved[name] = (layer.weight_quantizer, layer.input_quantizer)
            layer.weight_quantizer, layer.input_quantizer = nn.Identity(), nn.Identity()
        yield
    finally:
        for name, (wq, aq) in saved.items():
            layers[name].weight_quantizer, layers[name].input_quantizer = wq, aq


@torch.no_grad()
def _outputs(model, batches, outputs_fn):
    return [[o.detach().float() for o in outputs_fn(model, b)] for b in batches]


def relative_error(quantized: List[List[torch.Tensor]], reference: List[List[torch.Tensor]]) -> float:
    """Mean over output positions k of sum_batches ||q_k - r_k||^2 / sum_batches ||r_k||^2."""
    num = [0.0] * len(reference[0])
    den = [0.0] * len(reference[0])
    for q_batch, r_batch in zip(quantized, reference):
        for k, (q, r) in enumerate(zip(q_batch, r_batch)):
            num[k] += (q - r).pow(2).sum().item()
            den[k] += r.pow(2).sum().item()
    return sum(n / max(d, 1e-12) for n, d in zip(num, den)) / len(num)


def layer_sensitivity(model: nn.Module, batches: Sequence, outputs_fn: Callable) -> List[dict]:
    """[{"layer", "group", "weight", "act", "error"}]: the output error with only that layer quantized.

    `outputs_fn(model, batch)` returns the list of output tensors to compare. The model is put in
    eval mode (running BN statistics, fixed quantizer ranges).
    """
    model.eval()
    layers = quantized_layers(model)
    with float_layers(model, layers):
        reference = _outputs(model, batches, outputs_fn)
    rows = []
    for name, layer in layers.items():
        with float_layers(model, [n for n in layers if n != name]):
            error = relative_error(_outputs(model, batches, outputs_fn), reference)
        rows.append({"layer": name, "group": group_of(name), "weight": _describe(layer.weight_quantizer),
                     "act": _describe(layer.input_quantizer), "error": error})
    return rows


def group_sensitivity(model: nn.Module, batches: Sequence, outputs_fn: Callable) -> List[dict]:
    """[{"group", "layers", "error_only_quantized", "error_only_float"}] per group (model order),
    plus the row "all" (every layer quantized; its error_only_float is 0 by definition)."""
    model.eval()
    layers = quantized_layers(model)
    groups: Dict[str, List[str]] = {}
    for name in layers:
        groups.setdefault(group_of(name), []).append(name)
    with float_layers(model, layers):
        reference = _outputs(model, batches, outputs_fn)
    rows = [{"group": "all", "layers": len(layers), "error_only_quantized":
             relative_error(_outputs(model, batches, outputs_fn), reference), "error_only_float": 0.0}]
    for group, members in groups.items():
        others = [n for n in layers if n not in members]
        with float_layers(model, others):
            only_q = relative_error(_outputs(model, batches, outputs_fn), reference)
        with float_layers(model, members):
            only_f = relative_error(_outputs(model, batches, outputs_fn), reference)
        rows.append({"group": group, "layers": len(members), "error_only_quantized": only_q,
                     "error_only_float": only_f})
    return rows


def _describe(quantizer) -> str:
    method = getattr(quantizer, "method", "none")
    return "float" if method == "none" else f"{method}/{quantizer.bits}b"
