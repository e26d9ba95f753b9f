"""ResNet + FPN + P6/P7 backbone builder with "FPN-BN": norm and ReLU on FPN outputs and P6/P7."""
import math

from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .fpn_relu import build_fpn_with_relus, relu_placement_from_config
from .registration import register_once
from .top_block import LastLevelP6P7Norm


def top_block_in_channels(cfg, bottom_up):
    """Return the channels of MODEL.FPN.TOP_BLOCK_IN_FEATURE, which must be the last FPN input
    (e.g. "res5") or the FPN level built from it (e.g. "p5"); any other feature would give P6/P7
    the wrong strides.
    """
    in_feature = cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE
    last_input = cfg.MODEL.FPN.IN_FEATURES[-1]
    last_level = "p{}".format(int(math.log2(bottom_up.output_shape()[last_input].stride)))
    if in_feature == last_input:
        return bottom_up.output_shape()[last_input].channels
    if in_feature == last_level:
        return cfg.MODEL.FPN.OUT_CHANNELS
    raise ValueError(
        f"MODEL.FPN.TOP_BLOCK_IN_FEATURE = {in_feature!r} must be one of"
        f" {(last_input, last_level)} (the last of MODEL.FPN.IN_FEATURES or its FPN level)"
    )


@register_once(BACKBONE_REGISTRY)
def build_quant_det_resnet_fpn_backbone(cfg, input_shape):
    """Return detectron2's ResNet + FPN with a P6/P7 top block, optionally with "FPN-BN".

    MODEL.FPN.TOP_BLOCK_IN_FEATURE picks the P6 input ("res5": RetinaNet, "p5": FCOS).
    MODEL.FPN.NORM normalizes the lateral, output, P6 and P7 convs; MODEL.FPN.USE_RELU adds
    ReLUs after P6 and P7 and, by MODEL.FPN.RELU_PLACEMENT, after every FPN output conv
    ("output"), or as the original fork did ("fork", "all_convs"; see quant_det/config.py).
    With NORM "" and USE_RELU False (and "res5") the model equals detectron2's
    `build_retinanet_resnet_fpn_backbone`, parameter for parameter. ReLUs add no state.
    Works for every ResNet depth detectron2 builds (R18/R34 need RES2_OUT_CHANNELS 64).
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    fpn_cfg = cfg.MODEL.FPN
    placement = relu_placement_from_config(fpn_cfg)
    top_block = LastLevelP6P7Norm(
        in_channels=top_block_in_channels(cfg, bottom_up),
        out_channels=fpn_cfg.OUT_CHANNELS,
        in_feature=fpn_cfg.TOP_BLOCK_IN_FEATURE,
        norm=fpn_cfg.NORM,
        use_relu=placement is not None,
    )
    return build_fpn_with_relus(
        placement,
        bottom_up=bottom_up,
        in_features=fpn_cfg.IN_FEATURES,
        out_channels=fpn_cfg.OUT_CHANNELS,
        norm=fpn_cfg.NORM,
        top_block=top_block,
        fuse_type=fpn_cfg.FUSE_TYPE,
    )
