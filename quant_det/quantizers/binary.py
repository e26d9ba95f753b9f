"""Binary and ternary weights (weights only; scale per tensor, or per output channel if per_channel).

XNOR-Net (Rastegari et al. 2016, arXiv:1603.05279, sec. 3.1), levels 2, bits 1:
    alpha = mean|w|,  w_q = alpha * sign(w)  with sign(0) := +1
    dw_q/dw = 1 if |w| < 1 else 0 (straight-through with the hard-tanh clip of Hubara et al. 2016;
    alpha treated as a constant)

TWN, Ternary Weight Networks (Li & Liu 2016, arXiv:1605.04711, eq. 13/14), levels 3, bits 2:
    delta = 0.7 * mean|w|,  alpha = mean of |w| over {|w| > delta}
    w_q = alpha * sign(w) if |w| > delta else 0
    dw_q/dw = 1 (straight-through; delta and alpha treated as constants)
"""
import torch

from .registry import Quantizer, invalid, register_quantizer
from .ste import replace_ste


class _ScaledSignQuantizer(Quantizer):
    """Shared argument checks and per-tensor/per-channel reductions for xnor and ternary."""

    ROLES = ("weight",)
    BITS = 1
    LEVELS = 2

    def __init__(self, role, bits, levels=0, per_channel=False, num_channels=1):
        if bits != self.BITS:
            raise invalid("bits", bits, [self.BITS], f"method {self.method!r}")
        if levels not in (0, self.LEVELS):
            raise invalid("levels", levels, [0, self.LEVELS], f"method {self.method!r}")
        super().__init__(role, bits, self.LEVELS, per_channel, num_channels)

    def mean(self, t, mask=None):
        """Mean of `t` (over `mask` if given) per tensor, or per dim-0 slice broadcastable to `t`."""
        dims = tuple(range(1, t.dim())) if self.per_channel else tuple(range(t.dim()))
        if mask is None:
            return t.mean(dim=dims, keepdim=True)
        total = (t * mask).sum(dim=dims, keepdim=True)
        return total / mask.sum(dim=dims, keepdim=True).clamp_min(1)


@register_quantizer("xnor")
class XNORQuantizer(_ScaledSignQuantizer):
    """XNOR-Net binary weights {-alpha, +alpha}; see the module docstring."""

    def forward(self, x):
        self.check_channels(x)
        w = x.detach()
        alpha = self.mean(w.abs())
        return replace_ste(x, torch.where(w >= 0, alpha, -alpha), -1.0, 1.0)


@register_quantizer("ternary")
class TernaryQuantizer(_ScaledSignQuantizer):
    """TWN ternary weights {-alpha, 0, +alpha}; see the module docstring."""

    BITS = 2
    LEVELS = 3

    def forward(self, x):
        self.check_channels(x)
        w = x.detach()
        magnitude = w.abs()
        keep = magnitude > 0.7 * self.mean(magnitude)
        alpha = self.mean(magnitude, keep)
        return replace_ste(x, torch.sign(w) * alpha * keep)
