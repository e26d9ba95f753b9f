"""Shared fixtures: a detectron2 cfg with quant_det keys, a tiny synthetic detection batch, and
tools/train_net.py as a module."""
import functools
import importlib.util
import os
import shutil

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.structures import Boxes, Instances

import quant_det.modeling  # noqa: F401  (registers FCOS and the FPN-BN backbone)
from quant_det.config import add_quant_det_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(2)


@functools.lru_cache(maxsize=None)
def load_train_net():
    """tools/train_net.py as a module (tools/ is not a package): tests call its `argument_parser`,
    `setup` and `main` in-process, the very functions `python tools/train_net.py` runs."""
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_cfg(path=None, *opts):
    """A fresh cfg with quant_det keys, merged from a repo-relative yaml and KEY VALUE overrides."""
    cfg = get_cfg()
    add_quant_det_config(cfg)
    if path:
        cfg.merge_from_file(os.path.join(REPO, path))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def detectron2_resnet18():
    """detectron2's ResNet-18 backbone (BN, trainable, res5 out) as the digits configs build it:
    the target of torchvision / model-quantization classification checkpoints."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def make_batch(num_images=2, size=64, num_classes=10, seed=0):
    """`num_images` random images with two boxes each, in detectron2's model-input format."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        inst = Instances((size, size))
        xy = torch.randint(0, size // 2, (2, 2), generator=g).float()
        wh = torch.randint(8, size // 2, (2, 2), generator=g).float()
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (2,), generator=g)
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """`tmp_path_factory.mktemp` for module-scoped fixtures: what it made is deleted when the
    module's tests are done, unless a test of the session failed (kept to look at).

    The suite trains and checkpoints many small detectors (about 5.7 GB in all, 2026-12-02); a CI
    disk with little room ran out mid-`torch.save`. Function-scoped `tmp_path` dirs of passing
    tests are removed by pytest itself (tmp_path_retention_policy = "failed", pyproject.toml)."""
    made = []

    def mktemp(name):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == 0:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory):
    """Root of a small digits-det (120 train / 30 val images) registered for this test session.

    Returns the datasets root (the value for $QUANT_DET_DATASETS in subprocesses).
    """
    from quant_det.data import build_digits_det, register_digits_det
    root = str(tmp_path_factory.mktemp("datasets"))
    build_digits_det(os.path.join(root, "digits_det"), num_train=120, num_val=30)
    register_digits_det(os.path.join(root, "digits_det"))
    return root


@pytest.fixture
def cfg_loader():
    return load_cfg


@pytest.fixture
def batch_maker():
    return make_batch
