"""Whole-detector export: FCOS/RetinaNet-R18 W4A4 in onnxruntime vs PyTorch on a batch, detections
through detectron2's own post-processing, the export CLI, and the size/BOPs report."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from quant_det.export.detector import DenseNetwork, load_detector

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from quant_det.export.detector import OnnxDetector, export_detector, layer_differences, session  # noqa: E402
from quant_det.export.onnx_graph import count_ops, metadata  # noqa: E402

FCOS_W4A4 = os.path.join(REPO, "configs/digits/quant/fcos_R_18_FPN_FullBN_w4a4_lsq.yaml")
RETINA_W4A4 = os.path.join(REPO, "configs/digits/quant/retinanet_R_18_FPN_FullBN_w4a4_lsq.yaml")


def calibrated(config, *opts):
    """A randomly initialized detector whose quantizers were initialized (LSQ's first-batch rule)
    by one training-mode pass of backbone + head over random images (no loss: cheap)."""
    torch.manual_seed(0)
    cfg, model = load_detector(config, None, list(opts))
    network = DenseNetwork(model).train()
    with torch.no_grad():
        network(torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5)))
    return cfg, model.eval()


def assert_matches(got, want, name=""):
    """onnxruntime vs PyTorch: equal to 1e-4 except where a last-bit difference of the convolution
    (another summation order) flipped a rounding of a later quantizer: at most 0.1% of values,
    each by less than 5% of the output range."""
    diff = np.abs(got - want)
    assert (diff > 1e-4).mean() <= 1e-3, f"{name}: {(diff > 1e-4).mean():.2%} of values differ"
    assert diff.max() <= 0.05 * max(np.abs(want).max(), 1e-3), f"{name}: max diff {diff.max()}"


@pytest.fixture(scope="module")
def fcos():
    return calibrated(FCOS_W4A4, "MODEL.FCOS.SCORE_THRESH_TEST", 0.0, "MODEL.FCOS.TOPK_CANDIDATES_TEST", 50)


def images(n=2, seed=1):
    return torch.randn(n, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


def test_fcos_w4a4_onnxruntime_matches_pytorch_on_a_batch(fcos, tmp_path):
    cfg, model = fcos
    x = images()
    with torch.no_grad():
        ref = DenseNetwork(model)(x)
    # BN kept: the exported graph computes exactly the quantized PyTorch model
    exact = export_detector(model, str(tmp_path / "fcos_nofold.onnx"), fold_bn=False, example=x[:1])
    outs = session(str(tmp_path / "fcos_nofold.onnx")).run(None, {"images": x.numpy()})
    assert exact.output_names[:2] == ["logits_p3", "logits_p4"] and len(outs) == 15
    for name, r, o in zip(exact.output_names, ref, outs):
        assert_matches(o, r.numpy(), name)
    # BN folded (the default): onnxruntime = the export-form PyTorch model, per layer too
    folded = export_detector(model, None, example=x[:1])
    ops = count_ops(folded.proto)
    assert "BatchNormalization" not in ops and ops["QuantizeLinear"] == ops["Conv"]
    with torch.no_grad():
        export_out = folded.export_model(x)
    outs = session(folded.proto).run(None, {"images": x.numpy()})
    for name, r, o in zip(folded.output_names, export_out, outs):
        assert_matches(o, r.numpy(), name)
    rows = layer_differences(folded, x)
    assert len(rows) == 39  # 39 Conv2d modules; the 8 head tower convs run once per level (5 calls)
    assert sorted(r[2] for r in rows)[len(rows) // 2] < 1e-4  # median layer: no flipped rounding
    head = {r[0]: r[1] for r in rows}
    assert head["head.cls_subnet.0"] == 5 and head["backbone.bottom_up.stem.conv1"] == 1
    # what each layer became: the stem is W8A8 (POLICY), the rest 4-bit INT4/UINT4
    log = {r[0]: r for r in metadata(folded.proto)["quant_det.export_log"]}
    assert log["backbone.bottom_up.stem.conv1"][2:4] == ["lsq/8b QDQ INT8", "lsq/8b DQ INT8 per-channel"]
    assert log["head.cls_subnet.0"][3] == "lsq/4b DQ INT4 per-channel"
    assert log["head.cls_subnet.0"][4].startswith("folded per level (5 CycleBatchNormList levels")
    assert log["head.cls_score"][3] == "lsq/4b DQ INT4 per-tensor" and log["head.cls_score"][4] == "-"


def test_fcos_detections_through_onnxruntime_equal_pytorch(fcos, tmp_path):
    cfg, model = fcos
    path = str(tmp_path / "fcos.onnx")
    export_detector(model, path, fold_bn=False)
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
    with torch.no_grad():
        export_out = result.export_model(x)
    outs = session(result.proto).run(None, {"images": x.numpy()})
    for name, r, o in zip(result.output_names, export_out, outs):
        assert_matches(o, r.numpy(), name)
    backbone = export_detector(model, None, part="backbone", example=x)
    assert backbone.output_names == ["p3", "p4", "p5", "p6", "p7"]
    assert not any(r[0].startswith("head") for r in backbone.log)


def test_export_cli_writes_onnx_log_and_ap_comparison(fcos, tmp_path, tiny_digits):
    cfg, model = fcos
    weights = str(tmp_path / "fcos.pth")
    torch.save({"model": model.state_dict()}, weights)
    out = str(tmp_path / "out" / "fcos.onnx")
    env = dict(os.environ, QUANT_DET_DATASETS=tiny_digits, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/export_onnx.py"), "--config-file", FCOS_W4A4,
         "--weights", weights, "--output", out, "--check-ap", "--max-images", "3",
         "MODEL.FCOS.SCORE_THRESH_TEST", "0.0", "MODEL.FCOS.TOPK_CANDIDATES_TEST", "50"],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Per-layer export log" in proc.stdout and "delta AP (onnxruntime - PyTorch)" in proc.stdout
    report = json.load(open(out.replace(".onnx", ".export.json")))
    assert report["opset"] == 21 and report["nodes"]["QuantizeLinear"] == 83
    assert len(report["log"]) == 67 and set(report["ap"]) >= {"pytorch", "onnxruntime", "delta_AP"}
    assert os.path.exists(out.replace(".onnx", ".export.md"))
