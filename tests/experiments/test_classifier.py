"""Digit-crop classifier: crops in the detector's input format, FP32 learns deterministically, the
W2A2 fine-tune quantizes layer1..4 only, and its checkpoint renames into the qbackbone detectors."""
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.detection_utils import read_image
from torch import nn

from conftest import load_cfg
from quant_det.convert import QuantizationSpec
from quant_det.engine.trainer import Trainer
from quant_det.experiments.classifier import (
    PIXEL_MEAN_BGR, PIXEL_STD_BGR, SCOPE, _square_box, build_classifier, load_digit_crops,
    train_classifier)
from quant_det.layers import QuantConv2d

torch.set_num_threads(1)
TOOLS = Path(__file__).resolve().parents[2] / "tools"
QBACKBONE_CONFIGS = ["configs/digits/quant/fcos_R_18_FPN_FullBN_qbackbone_w2a2_lsq.yaml",
                     "configs/digits/quant/retinanet_R_18_FPN_FullBN_qbackbone_w2a2_lsq.yaml"]
W2A2 = QuantizationSpec(scope=SCOPE, weight_method="lsq", weight_bits=2, act_method="lsq", act_bits=2)


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits_root(tiny_digits):
    return os.path.join(tiny_digits, "digits_det")


@pytest.fixture(scope="module")
def fp32_run(digits_root, module_tmp):
    out = str(module_tmp("backbone_full"))
    return out, train_classifier(out, epochs=6, lr=0.002, batch_size=32, seed=0, root=digits_root,
                                 size=32)


@pytest.fixture(scope="module")
def low_bit_run(digits_root, fp32_run, module_tmp):
    """The W2A2 LSQ fine-tune, run through tools/train_classifier.py."""
    out = str(module_tmp("backbone_low"))
    argv = ["--out", out, "--init", os.path.join(fp32_run[0], "model_final.pth"),
            "--root", digits_root, "--size", "32", "--epochs", "1", "--lr", "0.0005", "--batch-size", "32",
            "--weight-method", "lsq", "--weight-bits", "2", "--act-method", "lsq", "--act-bits", "2"]
    assert load_tool("train_classifier").main(argv) == 0
    return out


def test_crops_are_normalized_bgr_boxes(digits_root):
    images, labels = load_digit_crops(digits_root, "val", size=32)
    with open(os.path.join(digits_root, "val", "annotations.json")) as f:
        coco = json.load(f)
    first = min(coco["annotations"], key=lambda a: (a["image_id"], a["id"]))
    assert images.shape == (len(coco["annotations"]), 3, 32, 32)
    assert labels[0].item() == first["category_id"] - 1
    assert sorted(labels.tolist()) == sorted(a["category_id"] - 1 for a in coco["annotations"])

    # The crop's mean colour is that of the padded box in detectron2's BGR reading of the image.
    file_name = next(i["file_name"] for i in coco["images"] if i["id"] == first["image_id"])
    bgr = torch.from_numpy(read_image(os.path.join(digits_root, "val", "images", file_name), "BGR").copy())
    x0, y0, x1, y1 = _square_box(first["bbox"], (bgr.shape[1], bgr.shape[0]), 0.15)
    expected = bgr[y0:y1, x0:x1].float().mean((0, 1))
    crop = images[0] * torch.tensor(PIXEL_STD_BGR).view(3, 1, 1) + torch.tensor(PIXEL_MEAN_BGR).view(3, 1, 1)
    torch.testing.assert_close(crop.mean((1, 2)), expected, atol=3.0, rtol=0)


def test_fp32_learns_and_writes_its_metrics(fp32_run):
    out, metrics = fp32_run
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0] - 0.3
    assert metrics["train_acc"] > 0.4  # chance: 0.1
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f) == json.loads(json.dumps(metrics))
    assert metrics["quant_spec"] is None and metrics["epochs"] == 6


def test_same_seed_same_weights(digits_root, tmp_path):
    runs = [train_classifier(str(tmp_path / str(i)), epochs=1, lr=0.002, batch_size=32, seed=7,
                             root=digits_root, size=32) for i in range(2)]
    assert runs[0]["history"][0]["loss"] == runs[1]["history"][0]["loss"]
    a, b = (torch.load(tmp_path / str(i) / "model_final.pth", weights_only=True) for i in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_low_bit_quantizes_residual_stages_only(low_bit_run):
    model = build_classifier(W2A2)
    model.load_state_dict(torch.load(os.path.join(low_bit_run, "model_final.pth"), weights_only=True))
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantConv2d)]
    assert len(quantized) == 19  # 16 block convs + 3 downsample convs
    assert all(n.split(".")[0] in SCOPE for n in quantized)
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    conv = model.layer3[0].downsample[0]
    assert conv.weight_quantizer.initialized.item() == 1 and conv.input_quantizer.initialized.item() == 1
    grid = conv.weight_quantizer(conv.weight) / conv.weight_quantizer.step
    assert set(torch.round(grid).unique().tolist()) <= {-2.0, -1.0, 0.0, 1.0}
    torch.testing.assert_close(grid, torch.round(grid))
    with open(os.path.join(low_bit_run, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["quant_spec"]["weight_bits"] == 2 and metrics["init"].endswith("model_final.pth")


@pytest.mark.parametrize("config", QBACKBONE_CONFIGS)
@torch.no_grad()
def test_low_bit_checkpoint_renames_into_detector_backbone(low_bit_run, config, tmp_path, capsys):
    src, dst = os.path.join(low_bit_run, "model_final.pth"), str(tmp_path / "detectron2.pth")
    assert load_tool("rename_checkpoint").main(
        [src, dst, "--rules", "torchvision-resnet", "--prefix", "backbone.bottom_up."]) == 0
    report = capsys.readouterr().out
    assert "layer1.0.conv1.weight_quantizer.step -> backbone.bottom_up.res2.0.conv1.weight_quantizer.step" in report
    assert "layer2.0.downsample.0.input_quantizer.step -> backbone.bottom_up.res3.0.shortcut.input_quantizer.step" in report
    assert "unconverted (2):\n  fc.weight\n  fc.bias" in report

    detector = Trainer.build_model(load_cfg(config)).eval()
    checkpointer = DetectionCheckpointer(detector)
    incompatible = checkpointer._load_model(checkpointer._load_file(dst))
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    # The configs quantize the stem 8-bit (POLICY); the classifier keeps conv1 float, so only the
    # stem's quantizers are left to initialize from data, as after the FP32 WEIGHT_EXTRA.
    missing = [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")]
    assert sorted(missing) == sorted(f"backbone.bottom_up.stem.conv1.{q}_quantizer.{p}"
                                     for q in ("weight", "input") for p in ("step", "initialized", "signed"))

    classifier = build_classifier(W2A2)
    classifier.load_state_dict(torch.load(src, weights_only=True))
    classifier.eval()
    x = classifier.maxpool(classifier.relu(classifier.bn1(classifier.conv1(torch.randn(2, 3, 64, 64)))))
    bottom_up = detector.backbone.bottom_up
    ours = bottom_up.res5(bottom_up.res4(bottom_up.res3(bottom_up.res2(x))))
    theirs = classifier.layer4(classifier.layer3(classifier.layer2(classifier.layer1(x))))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
