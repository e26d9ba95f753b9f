"""Size / BOPs report: exact numbers on a tiny net, and the dashboard columns from a run's config."""
import json
import os

import torch
import yaml
from torch import nn

from conftest import REPO
from quant_det.experiments import dashboard
from quant_det.export.report import config_cost, format_report, model_report
from quant_det.layers import QuantConv2d
from quant_det.quantizers import build_quantizer


def test_tiny_net_params_bits_size_macs_bops_are_exact():
    conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)                   # float
    conv2 = QuantConv2d.from_float(nn.Conv2d(8, 4, 3, padding=1, bias=True),
                                   build_quantizer("lsq", "weight", 4), build_quantizer("lsq", "act", 2))
    net = nn.Sequential(conv1, nn.BatchNorm2d(8), conv2)
    rows, total = model_report(net, batch_input=torch.zeros(1, 3, 10, 10))
    assert [(r["layer"], r["params"], r["weight_bits"], r["act_bits"]) for r in rows] == [
        ("0", 216, 32, 32), ("2", 292, 4, 2)]
    assert rows[0]["macs"] == 8 * 100 * 27 and rows[1]["macs"] == 4 * 100 * 72
    assert rows[0]["bops"] == 8 * 100 * 27 * 32 * 32 and rows[1]["bops"] == 4 * 100 * 72 * 4 * 2
    assert rows[1]["size_bits"] == 288 * 4 + 4 * 32
    # other 32-bit values: BN weight/bias/mean/var (4 x 8) + LSQ steps (2)
    assert total["other_float_values"] == 34
    assert total["size_mb"] == (216 * 32 + 288 * 4 + 4 * 32 + 34 * 32) / 8e6
    assert total["fp32_size_mb"] == (216 + 292 + 34) * 4 / 1e6
    text = format_report(rows, total)
    assert "| layer" in text and "compression vs FP32" in text


def test_shared_head_convs_count_every_level_and_quantized_model_is_smaller():
    fp32 = config_cost(os.path.join(REPO, "configs/digits/fcos_R_18_FPN_FullBN.yaml"))
    w4a4 = config_cost(os.path.join(REPO, "configs/digits/quant/fcos_R_18_FPN_FullBN_w4a4_lsq.yaml"))
    assert 50 < fp32[0] < 56 and 6 < w4a4[0] < 8          # MB: ~13.3M params at 32 vs ~4 bits
    assert w4a4[1] < fp32[1] / 40                           # GBOPs: 4x4 vs 32x32 (stem 8x8)


def test_dashboard_rows_get_size_and_bops_from_the_run_config(tmp_path):
    run_dir = tmp_path / "runs" / "fcos_w4a4"
    run_dir.mkdir(parents=True)
    with open(os.path.join(REPO, "configs/digits/quant/fcos_R_18_FPN_FullBN_w4a4_lsq.yaml")) as f:
        leaf = yaml.safe_load(f)
    cfg_path = run_dir / "config.yaml"
    # a run's config.yaml is detectron2's full dump; a merged leaf config builds the same model
    from quant_det.export.detector import load_cfg
    cfg_path.write_text(load_cfg(os.path.join(REPO, "configs/digits/quant/fcos_R_18_FPN_FullBN_w4a4_lsq.yaml")).dump())
    assert leaf["MODEL"]["QUANTIZATION"]["WEIGHT"]["BITS"] == 4
    (run_dir / "run.json").write_text(json.dumps({
        "name": "fcos_w4a4", "config": "c.yaml", "meta": {"task": "FCOS", "bits": "4/4"},
        "command": "python tools/train_net.py", "git_commit": "abc", "seed": 1, "status": "done",
        "metrics": {"bbox": {"AP": 40.0, "AP50": 60.0, "AP75": 45.0}}}))
    rows = dashboard.main_rows(dashboard.collect_runs([str(tmp_path / "runs")]))
    header = dashboard.MAIN_COLUMNS
    size, gbops = rows[0][header.index("Size MB")], rows[0][header.index("GBOPs")]
    expected = config_cost(str(cfg_path))
    assert size == f"{expected[0]:.2f}" and gbops == f"{expected[1]:.1f}"
