"""Fake-quantized Conv2d / Linear that keep the float layer's parameter names.

`QuantConv2d` subclasses detectron2's `Conv2d` (itself an `nn.Conv2d` with optional `norm` and
`activation`), so a float checkpoint (`weight`, `bias`, `norm.*`) loads unchanged; the only new
state lives in the two quantizer submodules, `weight_quantizer` and `input_quantizer`.

forward:  y = activation(norm(conv(input_quantizer(x), weight_quantizer(weight), bias)))

With both quantizers of method "none" the output is bit-identical to the float layer.
"""
import torch
from detectron2.layers import Conv2d
from torch import nn
from torch.nn import functional as F


class _QuantBits:
    """Bit widths of a quantized layer, read from its two quantizers."""

    @property
    def weight_bits(self) -> int:
        return self.weight_quantizer.bits

    @property
    def act_bits(self) -> int:
        return self.input_quantizer.bits


class QuantConv2d(_QuantBits, Conv2d):
    """detectron2 `Conv2d` whose weight and input pass through the given quantizer modules."""

    def __init__(self, *args, weight_quantizer: nn.Module, input_quantizer: nn.Module, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer, input_quantizer) -> "QuantConv2d":
        """Return a QuantConv2d sharing `conv`'s Parameters (and its norm/activation, if any)."""
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            norm=getattr(conv, "norm", None), activation=getattr(conv, "activation", None),
            weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
        )
        q.weight = conv.weight
        q.bias = conv.bias
        return q.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class QuantLinear(_QuantBits, nn.Linear):
    """`nn.Linear` whose weight and input pass through the given quantizer modules."""

    def __init__(self, in_features, out_features, bias=True, *, weight_quantizer, input_quantizer):
        super().__init__(in_features, out_features, bias=bias)
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer, input_quantizer) -> "QuantLinear":
        """Return a QuantLinear sharing `linear`'s Parameters."""
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                weight_quantizer=weight_quantizer, input_quantizer=input_quantizer)
        q.weight = linear.weight
        q.bias = linear.bias
        return q.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)
