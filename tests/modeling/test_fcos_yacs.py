"""FCOS from yacs: parity with detectron2's lazy FCOS, train/eval forwards, head norms."""
import pytest
import torch
from torch import nn

from detectron2 import model_zoo
from detectron2.config import get_cfg, instantiate
from detectron2.layers import CycleBatchNormList
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import quant_det.modeling  # noqa: F401  (registers FCOS and the backbone builder)
from quant_det.config import add_quant_det_config
from quant_det.modeling import FCOS


def detector_cfg(arch="FCOS", depth=18, **fcos):
    """Return a CPU cfg for `arch` on ResNet-`depth` + quant_det's P6/P7 FPN backbone."""
    cfg = add_quant_det_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.BACKBONE.NAME = "build_quant_det_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE = "p5" if arch == "FCOS" else "res5"
    cfg.MODEL.RETINANET.NUM_CLASSES = cfg.MODEL.FCOS.NUM_CLASSES = 3
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [
        [s, s * 2 ** (1 / 3), s * 2 ** (2 / 3)] for s in (32, 64, 128, 256, 512)
    ]
    for key, value in fcos.items():
        setattr(cfg.MODEL.FCOS, key, value)
    return cfg


def tiny_batch():
    """Two 64x64 images with two and three boxes."""
    torch.manual_seed(0)
    batch = []
    for boxes, classes in (
        ([[4, 6, 30, 40], [34, 20, 60, 50]], [0, 2]),
        ([[10, 10, 50, 50], [2, 2, 20, 16], [40, 4, 62, 28]], [1, 1, 0]),
    ):
        instances = Instances((64, 64))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor(classes)
        batch.append({"image": torch.rand(3, 64, 64) * 255, "instances": instances})
    return batch


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def num_params(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def test_fcos_r50_equals_lazy_config_fcos():
    cfg = detector_cfg(depth=50, NUM_CLASSES=80, NORM="GN")
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    torch.manual_seed(0)
    lazy = instantiate(model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py").model).eval()

    assert type(ours) is FCOS and isinstance(ours, type(lazy))
    assert shapes(ours) == shapes(lazy)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in lazy.named_modules()]
    assert num_params(ours) == num_params(lazy) == 32_244_245
    assert num_params(ours, trainable_only=True) == num_params(lazy, trainable_only=True)
    for attr in (
        "num_classes",
        "center_sampling_radius",
        "focal_loss_alpha",
        "focal_loss_gamma",
        "test_score_thresh",
        "test_nms_thresh",
        "test_topk_candidates",
        "max_detections_per_image",
        "head_in_features",
    ):
        assert getattr(ours, attr) == getattr(lazy, attr), attr
    assert torch.equal(ours.pixel_mean, lazy.pixel_mean)
    assert torch.equal(ours.pixel_std, lazy.pixel_std)

    # Same weights => bitwise-equal head outputs.
    ours.load_state_dict(lazy.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = [m.head([m.backbone(x)[f] for f in m.head_in_features]) for m in (ours, lazy)]
    for ours_level, lazy_level in zip(*(sum(o, []) for o in outs)):
        assert torch.equal(ours_level, lazy_level)


@pytest.mark.parametrize(
    "arch, loss_names",
    [
        ("FCOS", {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}),
        ("RetinaNet", {"loss_cls", "loss_box_reg"}),
    ],
)
def test_r18_train_and_eval_forward(arch, loss_names):
    cfg = detector_cfg(arch)
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 3
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.backbone.bottom_up.stages[0][0].conv1.weight.shape == (64, 64, 3, 3)  # BasicBlock

    with EventStorage() as storage:
        losses = model.train()(tiny_batch())
    assert set(losses) == loss_names
    for name, loss in losses.items():
        assert torch.isfinite(loss) and loss.item() > 0, name
    assert storage.latest()["num_pos_anchors"][0] > 0
    sum(losses.values()).backward()
    assert model.head.cls_score.weight.grad.abs().sum().item() > 0

    with torch.no_grad():
        results = model.eval()(tiny_batch())
    assert len(results) == 2
    for result in results:
        detections = result["instances"]
        assert isinstance(detections, Instances) and detections.image_size == (64, 64)
        # Score threshold 0: at most TEST.DETECTIONS_PER_IMAGE; fresh box deltas are ~0, so
        # FCOS boxes are often empty and dropped by detector_postprocess.
        assert 1 <= len(detections) <= 3
        boxes = detections.pred_boxes.tensor
        assert boxes.min().item() >= 0 and boxes.max().item() <= 64
        assert detections.pred_classes.max().item() < 3
        assert ((detections.scores >= 0) & (detections.scores <= 1)).all()


def norm_layers(model):
    """Return the norm modules of the classification tower, one per conv."""
    return [m for m in model.head.cls_subnet if not isinstance(m, (nn.Conv2d, nn.ReLU))]


def test_head_bn_is_per_level():
    torch.manual_seed(0)
    model = build_model(detector_cfg(NORM="BN"))
    norms = norm_layers(model)
    assert len(norms) == 4 and all(isinstance(n, CycleBatchNormList) and len(n) == 5 for n in norms)
    conv_weights = [k for k in model.head.state_dict() if k.endswith("weight") and ".norm" not in k]
    assert "cls_subnet.0.weight" in conv_weights and "cls_subnet.0.0.weight" not in conv_weights
    with EventStorage():
        model.train()(tiny_batch())
    # Each level's BN saw exactly one batch (its own level), so the statistics differ.
    assert [bn.num_batches_tracked.item() for bn in norms[0]] == [1] * 5
    means = [bn.running_mean for bn in norms[0]]
    for i in range(5):
        for j in range(i + 1, 5):
            assert (means[i] - means[j]).abs().max().item() > 1e-4, (i, j)


def test_head_bn_shared_is_one_bn_per_conv():
    model = build_model(detector_cfg(NORM="BN-shared"))
    norms = norm_layers(model)
    assert len(norms) == 4 and all(isinstance(n, nn.BatchNorm2d) for n in norms)
    with EventStorage():
        model.train()(tiny_batch())
    assert norms[0].num_batches_tracked.item() == 5  # one update per FPN level


def test_head_gn_and_none():
    gn = norm_layers(build_model(detector_cfg(NORM="GN")))
    assert len(gn) == 4 and all(isinstance(n, nn.GroupNorm) and n.num_groups == 32 for n in gn)
    assert norm_layers(build_model(detector_cfg(NORM=""))) == []


def test_head_norm_invalid():
    expected = r"MODEL.FCOS.NORM = 'FrozenBN' is not one of .*'BN-shared'"
    with pytest.raises(ValueError, match=expected):
        build_model(detector_cfg(NORM="FrozenBN"))
