"""Fake-quantized Conv2d / Linear that keep the float layer's parameter names.

`QuantConv2d` subclasses detectron2's `Conv2d` (itself an `nn.Conv2d` with optional `norm` and
`activation`), so a float checkpoint (`weight`, `bias`, `norm.*`) loads unchanged; the only new
state lives in the two quantizer submodules, `weight_quantizer` and `input_quantizer`.

forward:  y = activation(norm(conv(input_quantizer(x), weight_quantizer(W), bias)))
with W = weight, or, if `standardize_weight` (the original fork's wt_adaptive "var-mean"),
W = (weight - mean) / std with mean/std (unbiased) per output channel when the weight quantizer
is per-channel and over the whole tensor otherwise, computed without gradient like the original.

With both quantizers of method "none" the output is bit-identical to the float layer. Within one
forward of a converted model, a layer called several times (the shared heads) quantizes its weight
once (`weight_reuse.py`).
"""
import torch
from detectron2.layers import Conv2d
from torch import nn
from torch.nn import functional as F

from .weight_reuse import reuse_in_scope


def standardize(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """(weight - mean) / std; statistics detached, per output channel (dim 0) or per tensor."""
    with torch.no_grad():
        flat = weight.reshape(weight.shape[0], -1) if per_channel else weight.reshape(1, -1)
        std, mean = torch.std_mean(flat, dim=1)
        shape = (-1,) + (1,) * (weight.dim() - 1) if per_channel else ()
        std, mean = std.reshape(shape), mean.reshape(shape)
    return (weight - mean) / std


class _QuantBits:
    """Bit widths of a quantized layer, read from its two quantizers, and its quantized weight."""

    @property
    def weight_bits(self) -> int:
        return self.weight_quantizer.bits

    @property
    def act_bits(self) -> int:
        return self.input_quantizer.bits

    def _set_quantizers(self, weight_quantizer, input_quantizer, standardize_weight):
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        self.standardize_weight = standardize_weight

    def quantized_weight(self) -> torch.Tensor:
        """weight_quantizer(W); computed once per forward of a model with weight reuse on
        (`weight_reuse.py`: a head conv shared over the FPN levels runs its quantizer once)."""
        return reuse_in_scope(self, self._quantize_weight)

    def _quantize_weight(self) -> torch.Tensor:
        w = self.weight
        if self.standardize_weight:
            w = standardize(w, getattr(self.weight_quantizer, "per_channel", False))
        return self.weight_quantizer(w)


class QuantConv2d(_QuantBits, Conv2d):
    """detectron2 `Conv2d` whose weight and input pass through the given quantizer modules."""

    def __init__(self, *args, weight_quantizer: nn.Module, input_quantizer: nn.Module,
                 standardize_weight: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_quantizers(weight_quantizer, input_quantizer, standardize_weight)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer, input_quantizer,
                   standardize_weight: bool = False) -> "QuantConv2d":
        """Return a QuantConv2d sharing `conv`'s Parameters (and its norm/activation, if any)."""
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            norm=getattr(conv, "norm", None), activation=getattr(conv, "activation", None),
            weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
            standardize_weight=standardize_weight,
        )
        q.weight = conv.weight
        q.bias = conv.bias
        return q.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class QuantLinear(_QuantBits, nn.Linear):
    """`nn.Linear` whose weight and input pass through the given quantizer modules."""

    def __init__(self, in_features, out_features, bias=True, *, weight_quantizer, input_quantizer,
                 standardize_weight: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self._set_quantizers(weight_quantizer, input_quantizer, standardize_weight)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer, input_quantizer,
                   standardize_weight: bool = False) -> "QuantLinear":
        """Return a QuantLinear sharing `linear`'s Parameters."""
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
                standardize_weight=standardize_weight)
        q.weight = linear.weight
        q.bias = linear.bias
        return q.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)
