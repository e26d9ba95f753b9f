"""A 20-iteration digits-det training run (tools/train_net.py) lowers the loss, then evaluates AP."""
import json
import os
import subprocess
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.events import EventStorage

from conftest import REPO, load_cfg
from quant_det.engine.trainer import Trainer

CONFIG = "configs/digits/fcos_R_18_FPN.yaml"


def train(tiny_digits, out_dir, config, *opts, resume=False):
    """Run tools/train_net.py in a subprocess on the tiny data set; return the finished process."""
    env = dict(os.environ, QUANT_DET_DATASETS=tiny_digits, OMP_NUM_THREADS="2")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
           os.path.join(REPO, config)] + (["--resume"] if resume else []) + [
        "OUTPUT_DIR", str(out_dir), "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "5",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0", "QUANT_DET.LOG_PERIOD", "5",
        *map(str, opts)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def fixed_batch_loss(model, batch):
    """Total training loss on `batch` with the loss normalizer pinned, so two models compare.

    (detectron2 divides the dense detectors' losses by an EMA of the positive count that starts at
    300 and decays during the first iterations, which makes logged early losses rise.)
    """
    model.train()
    model.loss_normalizer = 10.0
    with torch.no_grad(), EventStorage(0):
        return sum(model(batch).values()).item()


def test_fcos_20_iterations_lower_the_loss_then_eval_returns_ap(tiny_digits, tmp_path):
    proc = train(tiny_digits, tmp_path, CONFIG, "SOLVER.MAX_ITER", 20, "SOLVER.STEPS", "()")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "eval_results.json") as f:
        bbox = json.load(f)["bbox"]
    assert {"AP", "AP50", "AP75"} <= set(bbox) and 0.0 <= bbox["AP"] <= 100.0

    cfg = load_cfg(CONFIG, "SOLVER.IMS_PER_BATCH", 4, "DATALOADER.NUM_WORKERS", 0)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    before = fixed_batch_loss(model, batch)
    DetectionCheckpointer(model).load(str(tmp_path / "model_final.pth"))
    after = fixed_batch_loss(model, batch)
    assert after < before, (before, after)  # measured 9.8 -> 8.2 with 2 threads
