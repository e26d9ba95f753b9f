"""Export mode of the quantized layers: modules whose PyTorch forward reproduces the eval-mode
quantized layer and whose TorchScript-ONNX trace is a few `quant_det::*` placeholder nodes that
`onnx_graph.finalize` rewrites into QuantizeLinear/DequantizeLinear (or level lookups).

Placeholders (custom domain "quant_det", removed before the model is saved):
  QAct(x, scale){lo, hi, layer}            -> QuantizeLinear [-> Clip] -> DequantizeLinear
  QWeight(codes, scale){lo, hi, layer, role} -> integer initializer -> DequantizeLinear
  LevelAct(x){thresholds, values, layer}   -> Greater/Where chain (float)
  LevelWeight(w){levels, layer}            -> w (float constant), levels in the Conv's metadata
  Mark(y){layer, role}                     -> removed; records the tensor holding a layer's input/output

`ExportLayer` replaces a QuantConv2d/QuantLinear; BatchNorm folding happens at construction
(see `prepare.py` for when it is refused).
"""
from typing import List, Optional

import torch
from torch import nn
from torch.autograd import Function
from torch.nn import functional as F

from .specs import LevelAct, LevelWeight, UniformAct, UniformWeight


def _typed(out, like):
    out.setType(like.type())
    return out


class _QAct(Function):
    @staticmethod
    def forward(ctx, x, scale, lo, hi, formula, layer):
        if formula == "dorefa":
            return x.clamp(0, 1).mul(float(hi)).round().div(float(hi))
        return (x / scale).clamp(lo, hi).round() * scale

    @staticmethod
    def symbolic(g, x, scale, lo, hi, formula, layer):
        return _typed(g.op("quant_det::QAct", x, scale, lo_i=lo, hi_i=hi, layer_s=layer), x)


class _QWeight(Function):
    @staticmethod
    def forward(ctx, codes, scale, lo, hi, layer, role):
        s = scale.view((-1,) + (1,) * (codes.dim() - 1)) if scale.dim() == 1 else scale
        return codes.to(scale.dtype) * s

    @staticmethod
    def symbolic(g, codes, scale, lo, hi, layer, role):
        out = g.op("quant_det::QWeight", codes, scale, lo_i=lo, hi_i=hi, layer_s=layer, role_s=role)
        out.setType(codes.type().with_dtype(torch.float32))
        return out


class _LevelAct(Function):
    @staticmethod
    def forward(ctx, x, thresholds, values, layer):
        y = torch.full_like(x, values[0])
        for t, v in zip(thresholds, values[1:]):
            y = torch.where(x > t, torch.full_like(x, v), y)
        return y

    @staticmethod
    def symbolic(g, x, thresholds, values, layer):
        return _typed(g.op("quant_det::LevelAct", x, thresholds_f=list(thresholds),
                           values_f=list(values), layer_s=layer), x)


class _LevelWeight(Function):
    @staticmethod
    def forward(ctx, w, levels, layer):
        return w.clone()

    @staticmethod
    def symbolic(g, w, levels, layer):
        return _typed(g.op("quant_det::LevelWeight", w, levels_s=levels, layer_s=layer), w)


class _Mark(Function):
    @staticmethod
    def forward(ctx, x, layer, role):
        return x.clone()

    @staticmethod
    def symbolic(g, x, layer, role):
        return _typed(g.op("quant_det::Mark", x, layer_s=layer, role_s=role), x)


def mark(x, layer, role="output"):
    """Identity that names `x` as the input or output of `layer` in the exported graph."""
    return _Mark.apply(x, layer, role)


class ExportLayer(nn.Module):
    """A Conv2d/Linear in export form: input quantizer spec, weight spec, optional folded BN.

    Arguments: `name` (module path, used in the graph and the log), `layer` (QuantConv2d /
    QuantLinear / plain Conv2d or Linear, eval mode), `act` / `weight` (specs from `specs.py`,
    or None for float), `weight_override`/`bias_override` (float tensors after BN folding, for
    float or level weights), `norm`/`activation` applied after the conv (None when folded),
    `int_bias` (quantize the bias to INT32 with scale act_scale * weight_scale when input and
    weight are both uniform 8-bit grids, as QDQ runtimes expect for their integer kernels;
    below 8 bits the bias stays float, added after the Conv: no runtime has integer kernels
    there, and act_scale * weight_scale is coarse enough to matter).
    """

    def __init__(self, name: str, layer: nn.Module, act, weight, bias: Optional[torch.Tensor],
                 norm: Optional[nn.Module], activation, int_bias: bool = True,
                 float_weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.name = name
        self.is_conv = isinstance(layer, nn.Conv2d)
        if self.is_conv:
            self.conv_args = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                                  groups=layer.groups)
            if layer.padding_mode != "zeros":
                raise ValueError(f"{name}: padding_mode {layer.padding_mode!r} is not exported")
        self.act = act
        self.weight_spec = weight
        self.norm = norm
        self.activation = activation
        self.bias_note = ""
        if isinstance(act, UniformAct):
            self.register_buffer("act_scale", act.scale.float().clone())
        if isinstance(act, LevelAct):
            self.act_thresholds = [float(t) for t in act.thresholds]
            self.act_values = [float(v) for v in act.values]
        if isinstance(weight, UniformWeight):
            self.register_buffer("weight_codes", weight.codes.to(torch.int32))
            self.register_buffer("weight_scale", weight.scale.float().clone())
        elif isinstance(weight, LevelWeight):
            self.register_buffer("weight_q", weight.weight.clone())
            self.levels_json = weight.levels_json()
        else:
            self.register_buffer("weight_f", float_weight.detach().float().clone())
        self.bias_int = self.bias_add = False
        if bias is not None:
            bias = bias.detach().float()
            uniform = isinstance(act, UniformAct) and isinstance(weight, UniformWeight)
            if int_bias and uniform and act.bits >= 8 and weight.bits >= 8:
                bscale = (act.scale.float() * weight.scale.float()).expand(bias.shape).clone()
                codes = torch.round(bias / bscale)
                if codes.abs().max().item() < 2 ** 31 - 1:
                    self.register_buffer("bias_codes", codes.to(torch.int32))
                    self.register_buffer("bias_scale", bscale)
                    self.bias_int = True
                    err = (codes * bscale - bias).abs().max().item()
                    self.bias_note = f"bias INT32 (max rounding {err:.2g})"
            if not self.bias_int:
                self.register_buffer("bias_f", bias.clone())
                # A float bias inside a Conv fed by DequantizeLinear is rounded to INT32 by
                # onnxruntime (its BiasQuantization transformer); a separate Add keeps it exact.
                self.bias_add = isinstance(act, UniformAct) or isinstance(weight, UniformWeight)
                self.bias_note = "bias float" + (" (Add after the Conv)" if self.bias_add else "")
        self.has_bias = bias is not None

    def quantized_input(self, x):
        if isinstance(self.act, UniformAct):
            return _QAct.apply(x, self.act_scale, self.act.lo, self.act.hi, self.act.formula, self.name)
        if isinstance(self.act, LevelAct):
            return _LevelAct.apply(x, self.act_thresholds, self.act_values, self.name)
        return x

    def weight_tensor(self):
        if isinstance(self.weight_spec, UniformWeight):
            return _QWeight.apply(self.weight_codes, self.weight_scale, self.weight_spec.lo,
                                  self.weight_spec.hi, self.name, "weight")
        if isinstance(self.weight_spec, LevelWeight):
            return _LevelWeight.apply(self.weight_q, self.levels_json, self.name)
        return self.weight_f

    def bias_tensor(self):
        if not self.has_bias or self.bias_add:
            return None
        if self.bias_int:
            return _QWeight.apply(self.bias_codes, self.bias_scale, -2 ** 31, 2 ** 31 - 1,
                                  self.name, "bias")
        return self.bias_f

    def forward(self, x):
        x = self.quantized_input(mark(x, self.name, "input"))
        w, b = self.weight_tensor(), self.bias_tensor()
        y = F.conv2d(x, w, b, **self.conv_args) if self.is_conv else F.linear(x, w, b)
        if self.bias_add:
            y = y + (self.bias_f.view(1, -1, 1, 1) if self.is_conv else self.bias_f)
        if self.norm is not None:
            y = self.norm(y)
        if self.activation is not None:
            y = self.activation(y)
        return mark(y, self.name)


class CycleExportLayer(nn.Module):
    """One shared conv with a BatchNorm per FPN level (detectron2's CycleBatchNormList, "Head-BN")
    folded into one ExportLayer per level; calls cycle through the levels like the BN list did."""

    def __init__(self, layers: List[ExportLayer]):
        super().__init__()
        self.levels = nn.ModuleList(layers)
        self.name = layers[0].name
        self._pos = 0

    def forward(self, x):
        y = self.levels[self._pos](x)
        self._pos = (self._pos + 1) % len(self.levels)
        return y
