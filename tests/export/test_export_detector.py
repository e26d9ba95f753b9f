"""Whole-detector export: FCOS/RetinaNet-R18 W4A4 in onnxruntime vs PyTorch on a batch, detections
through detectron2's own post-processing, the export CLI, and the size/BOPs report."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from conftest import REPO
from quant_det.export.detector import DenseNetwork, load_detector

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from quant_det.export.detector import OnnxDetector, export_detector, layer_differences, session  # noqa: E402
from quant_det.export.onnx_graph import count_ops, metadata  # noqa: E402
from quant_det.export.parity import parity_rows  # noqa: E402

FCOS_W4A4 = os.path.join(REPO, "configs/digits/quant/fcos_R_18_FPN_FullBN_w4a4_lsq.yaml")
RETINA_W4A4 = os.path.join(REPO, "configs/digits/quant/retinanet_R_18_FPN_FullBN_w4a4_lsq.yaml")


def calibrated(config, *opts):
    """A randomly initialized detector whose quantizers (LSQ's first-batch rule) and BN statistics
    were set by one training-mode pass of backbone + head over random images (no loss: cheap)."""
    torch.manual_seed(0)
    cfg, model = load_detector(config, None, list(opts))
    for m in model.modules():  # BN statistics of that pass, as calibration would set them
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    network = DenseNetwork(model).train()
    with torch.no_grad():
        network(torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5)))
    return cfg, model.eval()


def assert_layers_match(result, x):
    """Every layer of the export, run in PyTorch on onnxruntime's input of that layer, gives
    onnxruntime's output (relative 1e-5). End to end, a last-bit difference of a convolution may
    flip a later rounding (see `layer_differences`); the AP check covers that on trained models."""
    rows = layer_differences(result, x)
    assert len(rows) == len(result.layer_outputs) > 0
    for layer, calls, own, accumulated, scale in rows:
        assert own <= 1e-5 * max(scale, 1.0), (layer, own, scale)
    return rows


@pytest.fixture(scope="module")
def fcos():
    # every conv quantized (the configs keep the predictors float by default): one QDQ per Conv
    return calibrated(FCOS_W4A4, "MODEL.FCOS.SCORE_THRESH_TEST", 0.0, "MODEL.FCOS.TOPK_CANDIDATES_TEST", 50,
                      "MODEL.QUANTIZATION.SKIP_PREDICTORS", False)


def images(n=2, seed=1):
    return torch.randn(n, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


def test_fcos_w4a4_onnxruntime_matches_pytorch_on_a_batch(fcos, tmp_path):
    cfg, model = fcos
    x = images()
    # BN kept: the export-form model is the quantized PyTorch model itself
    exact = export_detector(model, str(tmp_path / "fcos_nofold.onnx"), fold_bn=False, example=x[:1])
    assert exact.output_names[:2] == ["logits_p3", "logits_p4"] and len(exact.output_names) == 15
    with torch.no_grad():
        for a, b in zip(DenseNetwork(model)(x), exact.export_model(x)):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert_layers_match(exact, x)
    # BN folded (the default)
    folded = export_detector(model, None, example=x[:1])
    ops = count_ops(folded.proto)
    assert "BatchNormalization" not in ops and ops["QuantizeLinear"] == ops["Conv"]
    rows = assert_layers_match(folded, x)
    assert len(rows) == 39  # 39 Conv2d modules; the 8 head tower convs run once per level (5 calls)
    calls = {r[0]: r[1] for r in rows}
    assert calls["head.cls_subnet.0"] == 5 and calls["backbone.bottom_up.stem.conv1"] == 1
    # what each layer became: the stem is W8A8 (POLICY), the rest 4-bit INT4/UINT4
    log = {r[0]: r for r in metadata(folded.proto)["quant_det.export_log"]}
    assert log["backbone.bottom_up.stem.conv1"][2:4] == ["lsq/8b QDQ INT8", "lsq/8b DQ INT8 per-channel"]
    assert log["head.cls_subnet.0"][3] == "lsq/4b DQ INT4 per-channel"
    assert log["head.cls_subnet.0"][4].startswith("folded per level (5 CycleBatchNormList levels")
    assert log["head.cls_score"][3] == "lsq/4b DQ INT4 per-tensor" and log["head.cls_score"][4] == "-"
    # one INT4 weight initializer per shared head conv, not one per level
    int4 = [t.name for t in folded.proto.graph.initializer if t.data_type == 22 and "weight" in t.name]
    assert len(int4) == 39 - 1 and "head.cls_subnet.0.weight_int" in int4
    # 4-bit codes packed two per byte: the file is about the report's W4A4 size (6.8 MB), not FP32's 53
    assert len(folded.proto.SerializeToString()) < 8e6


def test_detections_through_onnxruntime_equal_pytorch(tmp_path):
    """OnnxDetector = the detector with backbone + FPN + head in onnxruntime and detectron2's own
    decoding/NMS. Float FCOS (BN folded): no rounding to flip, so detections must be equal."""
    cfg, model = calibrated(os.path.join(REPO, "configs/digits/fcos_R_18_FPN_FullBN.yaml"),
                            "MODEL.FCOS.SCORE_THRESH_TEST", 0.0, "MODEL.FCOS.TOPK_CANDIDATES_TEST", 50)
    path = str(tmp_path / "fcos_fp32.onnx")
    export_detector(model, path)
    batch = [{"image": img * 50 + 120, "height": 128, "width": 128} for img in images(2, seed=3)]
    with torch.no_grad():
        ref = model(batch)
        got = OnnxDetector(model, path)(batch)
    for r, g in zip(ref, got):
        r, g = r["instances"], g["instances"]
        assert len(r) == len(g) > 0
        assert torch.equal(r.pred_classes, g.pred_classes)
        torch.testing.assert_close(g.scores, r.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(g.pred_boxes.tensor, r.pred_boxes.tensor, atol=1e-2, rtol=0)


def test_retinanet_w4a4_and_backbone_only_export(tmp_path):
    cfg, model = calibrated(RETINA_W4A4)
    x = images(1)
    result = export_detector(model, None, example=x)
    assert result.output_names[0] == "logits_p3" and result.output_names[-1] == "deltas_p7"
    assert_layers_match(result, x)
    backbone = export_detector(model, None, part="backbone", example=x)
    assert backbone.output_names == ["p3", "p4", "p5", "p6", "p7"]
    assert not any(r[0].startswith("head") for r in backbone.log)


def test_export_cli_writes_onnx_log_and_ap_comparison(fcos, tmp_path, tiny_digits, monkeypatch, capsys):
    cfg, model = fcos
    weights = str(tmp_path / "fcos.pth")
    torch.save({"model": model.state_dict()}, weights)
    out = str(tmp_path / "out" / "fcos.onnx")
    monkeypatch.setenv("QUANT_DET_DATASETS", tiny_digits)
    spec = importlib.util.spec_from_file_location("export_onnx_tool", os.path.join(REPO, "tools/export_onnx.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    code = tool.main(["--config-file", FCOS_W4A4, "--weights", weights, "--output", out, "--check-ap",
                      "--max-images", "3", "MODEL.FCOS.SCORE_THRESH_TEST", "0.0",
                      "MODEL.FCOS.TOPK_CANDIDATES_TEST", "50", "MODEL.QUANTIZATION.SKIP_PREDICTORS", "False"])
    stdout = capsys.readouterr().out
    assert "## Per-layer export log" in stdout and "delta AP (onnxruntime - PyTorch)" in stdout
    report = json.load(open(out.replace(".onnx", ".export.json")))
    assert report["opset"] == 21 and report["nodes"]["QuantizeLinear"] == 83
    assert len(report["log"]) == 39 and set(report["ap"]) >= {"pytorch", "onnxruntime", "delta_AP"}
    assert code == (0 if abs(report["ap"]["delta_AP"]) <= 0.1 else 1)
    assert max(v["layer"] / max(v["max_abs_output"], 1.0) for v in report["layer_max_abs_diff"].values()) <= 1e-5
    assert os.path.exists(out.replace(".onnx", ".export.md"))
    # the README parity table is generated from this report
    assert report["command"].startswith(f"python tools/export_onnx.py --config-file {FCOS_W4A4} --weights")
    row = parity_rows([out.replace(".onnx", ".export.json")])[0]
    assert row[1].startswith("INT4/UINT4 QDQ, opset 21") and row[2] == f"{report['ap']['pytorch']['AP']:.2f}"
