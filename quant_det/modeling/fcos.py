"""FCOS buildable from a yacs config: `MODEL.META_ARCHITECTURE: "FCOS"` plus MODEL.FCOS.*.

detectron2 0.6 ships FCOS only as a LazyConfig. The classes here subclass its `FCOS` and
`FCOSHead` and only add `from_config`, so training and inference are detectron2's own code.
"""
import functools

from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.modeling.backbone import build_backbone
from detectron2.modeling.meta_arch import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch import fcos as d2_fcos

from .registration import register_once

# MODEL.FCOS.NORM -> the `norm` argument of detectron2's RetinaNetHead. "BN"/"SyncBN" are passed
# as strings: RetinaNetHead turns them into one CycleBatchNormList per conv (a BN per FPN level,
# shared affine). The "-shared" forms are callables, so each conv gets one BN for all levels.
HEAD_NORMS = {
    "": "",
    "GN": "GN",
    "BN": "BN",
    "SyncBN": "SyncBN",
    "BN-shared": functools.partial(get_norm, "BN"),
    "SyncBN-shared": functools.partial(get_norm, "SyncBN"),
}


def head_norm_from_config(norm):
    """Return RetinaNetHead's `norm` for a MODEL.FCOS.NORM value; ValueError if unknown."""
    if norm not in HEAD_NORMS:
        raise ValueError(f"MODEL.FCOS.NORM = {norm!r} is not one of {tuple(HEAD_NORMS)}")
    return HEAD_NORMS[norm]


class FCOSHead(d2_fcos.FCOSHead):
    """detectron2's FCOSHead, also constructible as `FCOSHead(cfg, input_shape)`."""

    @configurable
    def __init__(self, **kwargs):
        """Same keyword arguments as :class:`detectron2.modeling.meta_arch.fcos.FCOSHead`."""
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.FCOS.NUM_CONVS,
            "norm": head_norm_from_config(cfg.MODEL.FCOS.NORM),
            "prior_prob": cfg.MODEL.FCOS.PRIOR_PROB,
        }


@register_once(META_ARCH_REGISTRY)
class FCOS(d2_fcos.FCOS):
    """detectron2's FCOS, registered as meta-architecture "FCOS" and built from MODEL.FCOS.*."""

    @configurable
    def __init__(self, **kwargs):
        """Same keyword arguments as :class:`detectron2.modeling.meta_arch.fcos.FCOS`."""
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        fcos = cfg.MODEL.FCOS
        head = FCOSHead(cfg, [backbone_shape[f] for f in fcos.IN_FEATURES])
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": fcos.IN_FEATURES,
            "num_classes": fcos.NUM_CLASSES,
            "center_sampling_radius": fcos.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": fcos.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": fcos.FOCAL_LOSS_GAMMA,
            "test_score_thresh": fcos.SCORE_THRESH_TEST,
            "test_topk_candidates": fcos.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": fcos.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }
