"""QUANT_DET.LOG_PERIOD sets how often detectron2's writers run (metrics.json rows)."""
import json

import torch

from conftest import load_cfg
from quant_det.engine.trainer import Trainer


def test_metrics_rows_every_log_period_and_at_the_end(tiny_digits, tmp_path):
    torch.manual_seed(0)
    cfg = load_cfg("configs/digits/fcos_R_18_FPN.yaml", "OUTPUT_DIR", str(tmp_path), "SOLVER.IMS_PER_BATCH", 2,
                   "SOLVER.MAX_ITER", 4, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", (), "DATASETS.TEST", (),
                   "DATALOADER.NUM_WORKERS", 0, "SOLVER.CHECKPOINT_PERIOD", 100, "QUANT_DET.LOG_PERIOD", 3)
    Trainer(cfg).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 3]  # detectron2's fixed period 20 gives [3]
