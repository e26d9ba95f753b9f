"""A 20-iteration digits-det training run whose loss goes down, then bbox evaluation."""
import json
import os
import subprocess
import sys

from conftest import REPO


def train(tiny_digits, out_dir, config, *opts, resume=False):
    """Run tools/train_net.py in a subprocess on the tiny data set; return the finished process."""
    env = dict(os.environ, QUANT_DET_DATASETS=tiny_digits, OMP_NUM_THREADS="2")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
           os.path.join(REPO, config)] + (["--resume"] if resume else []) + [
        "OUTPUT_DIR", str(out_dir), "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "5",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0", "QUANT_DET.LOG_PERIOD", "5", *map(str, opts)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def read_losses(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["total_loss"] for r in rows if "total_loss" in r]


def test_fcos_20_iterations_loss_goes_down_then_eval_returns_ap(tiny_digits, tmp_path):
    proc = train(tiny_digits, tmp_path, "configs/digits/fcos_R_18_FPN.yaml",
                 "SOLVER.MAX_ITER", 20, "SOLVER.STEPS", "()", "SOLVER.BASE_LR", 0.01)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = read_losses(tmp_path)
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
    with open(tmp_path / "eval_results.json") as f:
        bbox = json.load(f)["bbox"]
    assert {"AP", "AP50", "AP75"} <= set(bbox) and 0.0 <= bbox["AP"] <= 100.0
    assert (tmp_path / "model_final.pth").exists()
