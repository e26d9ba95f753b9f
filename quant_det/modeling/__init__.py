"""quant_det's detectron2 modules. Importing this package registers:

- META_ARCH_REGISTRY "FCOS": FCOS built from MODEL.FCOS.* (Head-BN via MODEL.FCOS.NORM);
- BACKBONE_REGISTRY "build_quant_det_resnet_fpn_backbone": ResNet + FPN + P6/P7 with FPN-BN.
"""
from .backbone import build_quant_det_resnet_fpn_backbone
from .fcos import FCOS, FCOSHead
from .top_block import LastLevelP6P7Norm

__all__ = ["FCOS", "FCOSHead", "LastLevelP6P7Norm", "build_quant_det_resnet_fpn_backbone"]
