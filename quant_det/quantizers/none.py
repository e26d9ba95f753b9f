"""Method "none": the identity; `forward(x)` returns `x` itself (bit-identical to the float model)."""
from torch import nn

from .registry import FLOAT_BITS, Quantizer, check_bits, invalid, register_quantizer


@register_quantizer("none")
class NoQuantizer(Quantizer):
    """Full precision. `bits` is kept as given (1..8, or 32 for "full precision"); `levels` is 0."""

    def __init__(self, role, bits, levels=0, per_channel=False, num_channels=1):
        check_bits(bits, allow_float=True)
        if bits == FLOAT_BITS and levels != 0:
            raise invalid("levels", levels, [0], "bits=32 means full precision")
        super().__init__(role, min(bits, 8), levels, per_channel, num_channels)
        self.bits = bits
        self.levels = 0

    # Full precision has nothing to record: a float layer's checkpoint holds no quantizer state.
    get_extra_state = nn.Module.get_extra_state
    set_extra_state = nn.Module.set_extra_state

    def forward(self, x):
        return x
