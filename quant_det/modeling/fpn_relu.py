"""Where an FPN's ReLUs go (MODEL.FPN.USE_RELU + MODEL.FPN.RELU_PLACEMENT): ours or the original fork's.

Example:
    backbone = build_fpn_with_relus("fork", bottom_up=..., in_features=["res3", "res4", "res5"],
                                    out_channels=256, norm="BN", top_block=..., fuse_type="sum")
"""
import torch.nn.functional as F

from detectron2.modeling.backbone import FPN

from ..config import FPN_RELU_PLACEMENTS


class TopDownReLUFPN(FPN):
    """detectron2's FPN with the original fork's USE_RELU placement ("fork").

    Below the top level, each lateral + upsampled top-down sum goes through a ReLU before it feeds
    its output conv and the next level, and each of those output convs ends in a ReLU. The top
    level (lateral and output conv, e.g. M5 and P5) stays linear. Same parameters as `FPN`.
    """

    def __init__(self, **fpn_kwargs):
        """Build detectron2's `FPN` from `fpn_kwargs`, then put a ReLU after the output convs
        below the top level."""
        super().__init__(**fpn_kwargs)
        for output_conv in self.output_convs[1:]:  # top-down order: [0] is the top level
            output_conv.activation = F.relu

    def forward(self, x):
        """Return {"p<stage>": feature} as `FPN.forward`, with the top-down sums ReLU'd."""
        bottom_up_features = self.bottom_up(x)
        inputs = [bottom_up_features[name] for name in reversed(self.in_features)]
        merged = self.lateral_convs[0](inputs[0])
        results = [self.output_convs[0](merged)]
        for feature, lateral_conv, output_conv in zip(
            inputs[1:], self.lateral_convs[1:], self.output_convs[1:]
        ):
            merged = lateral_conv(feature) + F.interpolate(merged, scale_factor=2.0, mode="nearest")
            if self._fuse_type == "avg":
                merged = merged / 2
            merged = F.relu(merged)
            results.insert(0, output_conv(merged))
        if self.top_block is not None:
            name = self.top_block.in_feature
            top_input = bottom_up_features.get(name)
            if top_input is None:
                top_input = results[self._out_features.index(name)]
            results.extend(self.top_block(top_input))
        return dict(zip(self._out_features, results))


def relu_placement_from_config(fpn_cfg):
    """Return MODEL.FPN.RELU_PLACEMENT if MODEL.FPN.USE_RELU, else None (no ReLU in the FPN).

    The placement is checked even when USE_RELU is False, so a typo never waits for the day the
    ReLU is switched on. Raises ValueError naming the key, the value and the allowed placements.
    """
    placement = fpn_cfg.RELU_PLACEMENT
    if placement not in FPN_RELU_PLACEMENTS:
        raise ValueError(
            f"MODEL.FPN.RELU_PLACEMENT = {placement!r} is not one of {FPN_RELU_PLACEMENTS}"
        )
    return placement if fpn_cfg.USE_RELU else None


def build_fpn_with_relus(placement, **fpn_kwargs):
    """Return an FPN built from detectron2's `FPN` arguments with ReLUs at `placement`.

    `placement` is None (no ReLU: detectron2's FPN), "output", "fork" or "all_convs" (see
    MODEL.FPN.RELU_PLACEMENT in quant_det/config.py). The P6/P7 top block in `fpn_kwargs` gets
    its own ReLUs from its constructor. The ReLUs are `activation`s of detectron2's `Conv2d`
    (plus, for "fork", one on each top-down sum in the forward), so every placement has exactly
    the parameters, names and initialization of detectron2's FPN.
    """
    if placement not in (None, *FPN_RELU_PLACEMENTS):
        raise ValueError(f"placement = {placement!r} is not one of {(None, *FPN_RELU_PLACEMENTS)}")
    if placement == "fork":
        return TopDownReLUFPN(**fpn_kwargs)
    backbone = FPN(**fpn_kwargs)
    relu_convs = {None: [], "output": backbone.output_convs,
                  "all_convs": [*backbone.lateral_convs, *backbone.output_convs]}[placement]
    for conv in relu_convs:
        conv.activation = F.relu
    return backbone
