"""Every yaml under configs/ builds its model on CPU and runs one train and one eval forward."""
import glob
import math
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from conftest import REPO, load_cfg
from quant_det.convert import convert_to_quantization

CONFIGS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"),
                                                 recursive=True)
    if not os.path.basename(p).startswith("Base-"))


def test_config_tree_is_complete():
    names = {os.path.basename(p) for p in CONFIGS}
    for arch in ("retinanet", "fcos"):
        assert f"{arch}_R_18_FPN.yaml" in names
        for depth in (18, 34, 50):
            assert f"{arch}_R_{depth}_FPN_1x.yaml" in names


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_and_runs_forward(path, batch_maker):
    cfg = load_cfg(path)
    num_classes = cfg.MODEL.FCOS.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE == "FCOS" \
        else cfg.MODEL.RETINANET.NUM_CLASSES
    torch.manual_seed(0)
    model = build_model(cfg)
    convert_to_quantization(model, cfg)
    model.train()
    with EventStorage(0):  # detectron2's dense detectors log training statistics
        losses = model(batch_maker(num_images=2, size=64, num_classes=num_classes))
    assert losses and all(math.isfinite(v.item()) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(batch_maker(num_images=1, size=64))
    assert isinstance(out[0]["instances"], Instances)
