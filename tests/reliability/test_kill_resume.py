"""SIGKILL mid-training, then --resume: the final weights and AP equal an uninterrupted run's.

12 iterations of a small FCOS-R18 W4A4 LSQ on 40 digits-det images (batch 2, CHECKPOINT_PERIOD 4,
single thread, CPU). The interrupted run is killed once `last_checkpoint` names model_0000007.pth
(i.e. somewhere in iterations 8..11), so the resumed run must restore the optimizer momentum, LR
schedule, loss-normalizer EMA, quantizer state and data-stream position. Comparison is exact
(torch.equal): CPU kernels with one thread are deterministic, and nothing random is left unseeded.
"""
import signal
import subprocess
import time

import pytest
import torch

from reliability.digits_runs import env_for, make_small_digits, model_state, read_json, train_command

pytestmark = pytest.mark.slow
OPTS = ["SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "4"]


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def kill_after_checkpoint(cmd, env, out_dir, checkpoint="model_0000007.pth"):
    """Start `cmd`, SIGKILL it as soon as last_checkpoint names `checkpoint`; return its exit code."""
    tag = out_dir / "last_checkpoint"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if tag.exists() and tag.read_text() == checkpoint:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    return proc.wait(timeout=60)


def test_sigkill_then_resume_reproduces_uninterrupted_run(tmp_path):
    env = env_for(make_small_digits(tmp_path / "datasets"))
    full, killed = tmp_path / "full", tmp_path / "killed"
    run(train_command(full, *OPTS), env)

    assert kill_after_checkpoint(train_command(killed, *OPTS), env, killed) == -signal.SIGKILL
    assert not (killed / "model_final.pth").exists()
    resumed = run(train_command(killed, *OPTS, resume=True), env)
    assert "Starting training from iteration 8" in resumed.stdout + resumed.stderr
    assert "data stream resumes at image 16" in resumed.stdout + resumed.stderr

    want, got = model_state(full / "model_final.pth"), model_state(killed / "model_final.pth")
    assert set(want) == set(got)
    assert any(".step" in k for k in want)  # the LSQ steps are part of what is compared
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert different == []
    want_ckpt = torch.load(full / "model_final.pth", weights_only=False)
    got_ckpt = torch.load(killed / "model_final.pth", weights_only=False)
    assert want_ckpt["loss_normalizer"] == got_ckpt["loss_normalizer"]
    assert want_ckpt["loss_normalizer"]["loss_normalizer"] != 300.0  # the EMA has moved
    ap = read_json(full / "eval_results.json")["bbox"]["AP"]
    assert 0.0 <= ap <= 100.0  # a number (APl is NaN: digits-det has no large boxes), so compare text
    assert (full / "eval_results.json").read_text() == (killed / "eval_results.json").read_text()
