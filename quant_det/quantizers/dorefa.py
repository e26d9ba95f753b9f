"""DoReFa-Net quantizers (Zhou et al. 2016, "DoReFa-Net: Training Low Bitwidth Convolutional Neural
Networks with Low Bitwidth Gradients", arXiv:1606.06160), with n = L - 1 levels steps (n = 2^k - 1
when levels is 0):

    quantize_k(r) = round(n * r) / n,  r in [0, 1], gradient 1 (straight-through)

    activations:      x_q = quantize_k(clamp(x, 0, 1)),  dx_q/dx = 1 on 0 < x < 1, else 0
    weights, L > 2:   w_q = 2 * quantize_k(tanh(w) / (2 * max|tanh(w)|) + 1/2) - 1      (paper eq. 9)
                      (uniform=True drops the tanh: w / (2 * max|w|) + 1/2)
    weights, L = 2:   w_q = sign(w) * mean|w|,  dw_q/dw = 1, mean|w| treated as a constant (sec. 2.4)

The max/mean are per tensor, or per output channel (dim 0) with per_channel=True. sign(0) := +1 so
binary weights take exactly two values.
"""
import torch

from .registry import Quantizer, register_quantizer
from .ste import replace_ste, round_ste, unit_quantize_ste

_TINY = 1e-12


@register_quantizer("dorefa")
class DoReFaQuantizer(Quantizer):
    """DoReFa weights ("weight") or activations ("act"); see the module docstring for the formulas."""

    def __init__(self, role, bits, levels=0, per_channel=False, num_channels=1, uniform=False):
        super().__init__(role, bits, levels, per_channel, num_channels)
        self.uniform = bool(uniform)

    def extra_repr(self):
        return super().extra_repr() + (", uniform=True" if self.uniform else "")

    def forward(self, x):
        if self.role == "act":
            return unit_quantize_ste(x, self.levels - 1)
        if self.levels == 2:
            scale = self._reduce(x.detach().abs(), "mean")
            return replace_ste(x, torch.where(x >= 0, scale, -scale))
        t = x if self.uniform else torch.tanh(x)
        r = t / (2 * self._reduce(t.abs(), "amax").clamp_min(_TINY)) + 0.5
        n = self.levels - 1
        return 2 * (round_ste(r * n) / n) - 1

    def _reduce(self, t, how):
        """mean/amax of `t` over the whole tensor, or per dim-0 slice (broadcastable) if per_channel."""
        if not self.per_channel:
            return t.mean() if how == "mean" else t.amax()
        flat = t.flatten(1)
        out = flat.mean(1) if how == "mean" else flat.amax(1)
        return self.channel_view(out, t)
