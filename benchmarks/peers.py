"""The QAT implementations bench_peers.py compares: each wraps the same FP32 model for a W4A4 step.

Rows (per tensor, 4-bit weights and 4-bit conv/linear inputs, the placement quant_det uses):
  quant_det LSQ                     quant_det.convert.quantize_model (QuantConv2d/QuantLinear)
  torch.ao FakeQuantize             torch.ao.quantization.FakeQuantize, MovingAverageMinMax, 4-bit ranges
  torch.ao _LearnableFakeQuantize   torch.ao's learnable-scale FakeQuantize (LSQ-style), 4-bit ranges
  torchao IntxFakeQuantizer         dynamic int4; its configs have no per-tensor granularity, so each
                                    tensor is fake-quantized as one [1, N] token/row (= per tensor)
  brevitas                          brevitas.nn.QuantConv2d/QuantLinear, weight_bit_width 4, input
                                    Int8ActPerTensorFloat at bit_width 4
  NNCF                              nncf.quantize (8 bits: its default HW config refuses 4), then
                                    num_bits = 4 on every quantizer; NNCF picks its own insertion points
For the first four the Conv2d/Linear layers are wrapped by hand (torchao's quantize_(model,
QATConfig) converts only Linear layers). A peer that is not installed, or cannot wrap a model, is
skipped with a note. `pip install -e .[bench]` installs all four.

    model = quantize("brevitas", fp32, "backbone.bottom_up", part, example)  # a quantized deep copy
"""
import copy
import importlib.util

# row -> the module that must be importable
ROWS = {
    "quant_det LSQ": "quant_det",
    "torch.ao FakeQuantize": "torch",
    "torch.ao _LearnableFakeQuantize": "torch",
    "torchao IntxFakeQuantizer": "torchao",
    "brevitas": "brevitas",
    "NNCF": "nncf",
}
OURS = "quant_det LSQ"
BITS = 4


def set_part(model, part_name, new):
    """`model` with its submodule `part_name` replaced by `new` (`new` itself when part_name is "")."""
    if part_name == "":
        return new
    parent, _, child = part_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


# ---- hand wrapping -------------------------------------------------------------------------------
def _norm_act(conv, out):
    """Apply detectron2 Conv2d's optional norm/activation (plain nn.Conv2d has neither)."""
    if getattr(conv, "norm", None) is not None:
        out = conv.norm(out)
    if getattr(conv, "activation", None) is not None:
        out = conv.activation(out)
    return out


def wrap_layers(root, make):
    """Replace every nn.Conv2d / nn.Linear under `root` by make(layer); returns how many."""
    from torch import nn

    count = 0
    for name, module in list(root.named_modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, child, make(module))
            count += 1
    return count


def fake_quant_wrapper(weight_quant, act_quant):
    """make(layer) for wrap_layers: y = layer(act_quant(x)) with weight weight_quant(W)."""
    from torch import nn
    from torch.nn import functional as F

    class FakeQuantLayer(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer, self.weight_quant, self.act_quant = layer, weight_quant(), act_quant()

        def forward(self, x):
            x, w = self.act_quant(x), self.weight_quant(self.layer.weight)
            if isinstance(self.layer, nn.Linear):
                return F.linear(x, w, self.layer.bias)
            return _norm_act(self.layer, self.layer._conv_forward(x, w, self.layer.bias))

    return FakeQuantLayer


def torch_ao(learnable):
    """make(layer) for wrap_layers with torch.ao 4-bit FakeQuantize (or _LearnableFakeQuantize if `learnable`)."""
    import torch
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    half = 2 ** (BITS - 1)
    if learnable:
        def act():
            return _LearnableFakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=2 * half - 1,
                                          use_grad_scaling=True, dtype=torch.quint8, qscheme=torch.per_tensor_affine)

        def weight():
            return _LearnableFakeQuantize(MovingAverageMinMaxObserver, quant_min=-half, quant_max=half - 1,
                                          use_grad_scaling=True, dtype=torch.qint8,
                                          qscheme=torch.per_tensor_symmetric)
    else:
        def act():
            return FakeQuantize(MovingAverageMinMaxObserver, quant_min=0, quant_max=2 * half - 1,
                                dtype=torch.quint8, qscheme=torch.per_tensor_affine)

        def weight():
            return FakeQuantize(MovingAverageMinMaxObserver, quant_min=-half, quant_max=half - 1,
                                dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return fake_quant_wrapper(weight, act)


def torchao_intx():
    """make(layer) for wrap_layers with torchao's dynamic int4 IntxFakeQuantizer, applied per tensor."""
    import torch
    from torch import nn
    from torchao.quantization.granularity import PerAxis, PerToken
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

    dtype = getattr(torch, f"int{BITS}")

    class PerTensor(nn.Module):
        """The tensor as one [1, N] row: per-token / per-axis-0 quantization of it is per tensor."""

        def __init__(self, config):
            super().__init__()
            self.fq = IntxFakeQuantizer(config)

        def forward(self, x):
            return self.fq(x.reshape(1, -1)).view_as(x)

    def act():
        return PerTensor(IntxFakeQuantizeConfig(dtype, granularity=PerToken(), is_symmetric=False, is_dynamic=True))

    def weight():
        return PerTensor(IntxFakeQuantizeConfig(dtype, granularity=PerAxis(0), is_symmetric=True, is_dynamic=True))

    return fake_quant_wrapper(weight, act)


def brevitas_layers():
    """make(layer) for wrap_layers: the brevitas QuantConv2d/QuantLinear sharing the layer's parameters."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat
    from torch import nn

    class NormAct(nn.Module):
        def __init__(self, inner, conv):
            super().__init__()
            self.inner, self.norm, self.activation = inner, getattr(conv, "norm", None), getattr(conv, "activation", None)

        def forward(self, x):
            return _norm_act(self, self.inner(x))

    def make(layer):
        kw = dict(weight_bit_width=BITS, input_quant=Int8ActPerTensorFloat, input_bit_width=BITS,
                  bias=layer.bias is not None)
        if isinstance(layer, nn.Linear):
            new = qnn.QuantLinear(layer.in_features, layer.out_features, **kw)
        else:
            new = qnn.QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups, **kw)
        new.weight = layer.weight
        if layer.bias is not None:
            new.bias = layer.bias
        return NormAct(new, layer) if isinstance(layer, nn.Conv2d) else new

    return make


def quantize(row, model, part_name, part, example):
    """The model with `part` quantized by `row`'s implementation (a deep copy of the FP32 model)."""
    model = copy.deepcopy(model)
    part = model.get_submodule(part_name) if part_name else model
    if row == OURS:
        from quant_det.convert import QuantizationSpec, quantize_model
        scope = tuple(n for n, _ in part.named_children())
        spec = QuantizationSpec(scope=scope, weight_method="lsq", weight_bits=BITS, act_method="lsq", act_bits=BITS)
        spec.validate()
        quantize_model(part, spec)
        return model
    if row == "NNCF":
        import nncf
        from nncf.torch.quantization.layers import BaseQuantizer
        was_training = part.training
        quantized = nncf.quantize(part, nncf.Dataset([example]), subset_size=1)
        quantizers = [m for m in quantized.modules() if isinstance(m, BaseQuantizer)]
        for q in quantizers:  # NNCF's default HW config refuses 4 bits: quantize at 8, then set 4
            q.num_bits = BITS
        quantized.train(was_training)
        return set_part(model, part_name, quantized)
    make = {"torch.ao FakeQuantize": lambda: torch_ao(False),
            "torch.ao _LearnableFakeQuantize": lambda: torch_ao(True),
            "torchao IntxFakeQuantizer": torchao_intx,
            "brevitas": brevitas_layers}[row]()
    wrap_layers(part, make)
    return model


def available(row, missing):
    """True if `row`'s package is importable and neither it nor the row is named in `missing`."""
    module = ROWS[row]
    if module in missing or row in missing:
        return False
    return importlib.util.find_spec(module) is not None


def versions():
    """Installed version of each row's package (torch for the torch.ao rows)."""
    import importlib.metadata as md

    out = {}
    for row, module in ROWS.items():
        try:
            out[row] = md.version(module)
        except md.PackageNotFoundError:
            pass
    return out
