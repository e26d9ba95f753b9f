"""P6/P7 top block of an FPN with optional normalization and ReLU (the "FPN-BN" top block)."""
import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, get_norm


class LastLevelP6P7Norm(nn.Module):
    """detectron2's `LastLevelP6P7` whose two stride-2 convs can carry a norm and a ReLU.

    With `norm=""` and `use_relu=False` it has the same parameters (`p6.weight`, `p6.bias`,
    `p7.weight`, `p7.bias`), initialization and output as `LastLevelP6P7`. With a norm the convs
    lose their bias and gain `p6.norm` / `p7.norm`; with `use_relu` both outputs go through a
    ReLU. As in detectron2, P7 is always computed from ReLU(P6).
    """

    def __init__(self, in_channels, out_channels, in_feature="res5", norm="", use_relu=False):
        """
        Args:
            in_channels (int): channels of `in_feature` (res5 channels, or the FPN width for p5).
            out_channels (int): channels of P6 and P7.
            in_feature (str): name of the feature the block reads, e.g. "res5" or "p5".
            norm (str or callable): see :func:`detectron2.layers.get_norm`; "" = none.
            use_relu (bool): apply a ReLU after each of P6 and P7.
        """
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        activation = F.relu if use_relu else None
        self.p6, self.p7 = (
            Conv2d(
                channels,
                out_channels,
                kernel_size=3,
                stride=2,
                padding=1,
                bias=not norm,
                norm=get_norm(norm, out_channels),
                activation=activation,
            )
            for channels in (in_channels, out_channels)
        )
        # Initialized after both are created, in LastLevelP6P7's order, so equal seeds give
        # equal weights.
        for module in [self.p6, self.p7]:
            weight_init.c2_xavier_fill(module)

    def forward(self, x):
        """Return [P6, P7] computed from the top-block input `x`."""
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]
