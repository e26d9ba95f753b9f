"""A finished run is never overwritten or mixed with another: OUTPUT_DIR holding a run is refused
without --resume/--overwrite, a second run into a locked OUTPUT_DIR fails at once naming the first
one's process, --eval-only never replaces the run's results, a killed save's temp files are
removed and, on --resume, metrics.json rows the resumed run redoes are dropped.

Every case copies one finished 2-iteration run (checkpoints at iterations 0 and 1, evaluated) of
the small FCOS-R18 W4A4 LSQ on a 40-image digits-det, and compares the md5 of every file before
and after (`md5s`). All in-process except the lock, which is held by a real training process.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from conftest import load_train_net
from quant_det.engine.output_dir import LOCK_FILE, lock_output_dir, prepare_output_dir, unlock_output_dir
from quant_det.experiments import runner
from reliability.digits_runs import env_for, make_small_digits, md5s, run_args, train_command

train_net = load_train_net()

FINISHED = ["SOLVER.MAX_ITER", 2, "SOLVER.CHECKPOINT_PERIOD", 1]
NO_EVAL = ["DATASETS.TEST", "()"]


@pytest.fixture(scope="module")
def datasets(module_tmp):
    root = make_small_digits(module_tmp("output_dir") / "datasets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUANT_DET_DATASETS", root)
        yield root


@pytest.fixture(scope="module")
def finished_run(datasets, module_tmp):
    out = module_tmp("finished") / "run"
    train_net.main(run_args(out, *FINISHED))
    assert {"model_0000000.pth", "model_0000001.pth", "model_final.pth", "eval_results.json",
            "metrics.json", "config.yaml", "log.txt"} <= set(os.listdir(out))
    return out


@pytest.fixture
def run_dir(finished_run, tmp_path):
    """A copy of the finished run (with a file of the user's), and the md5 of its files."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "notes.txt").write_text("the user's own file\n")
    return out, md5s(out)


def iterations(out):
    with open(out / "metrics.json") as f:
        return [json.loads(line)["iteration"] for line in f if "total_loss" in line]


def test_rerun_without_resume_is_refused_naming_the_folder_and_both_ways_out(run_dir):
    out, before = run_dir
    with pytest.raises(ValueError) as info:
        train_net.main(run_args(out, *FINISHED))
    message = str(info.value)
    assert f"OUTPUT_DIR {str(out)!r} already holds a run" in message
    assert "last_checkpoint -> model_final.pth" in message and "eval_results.json" in message
    assert "--resume" in message and "--overwrite" in message
    assert md5s(out) == before  # nothing written, no lock file left


def test_overwrite_deletes_the_previous_run_then_trains_a_new_one(run_dir):
    out, before = run_dir
    train_net.main(run_args(out, "SOLVER.MAX_ITER", 1, "SOLVER.CHECKPOINT_PERIOD", 100, *NO_EVAL,
                      flags=["--overwrite"]))
    assert sorted(n for n in os.listdir(out) if n.endswith(".pth")) == ["model_final.pth"]
    assert not (out / "eval_results.json").exists() and not (out / "inference").exists()
    assert iterations(out) == [0]  # the old run's rows are gone, not mixed in
    assert "MAX_ITER: 1\n" in (out / "config.yaml").read_text()
    assert md5s(out)["notes.txt"] == before["notes.txt"]  # not a file of the run: kept


@pytest.mark.slow
def test_second_run_into_a_locked_output_dir_fails_at_once_naming_the_first_process(datasets, tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    env = env_for(datasets)
    first = subprocess.Popen(train_command(out, "SOLVER.MAX_ITER", 2000, "SOLVER.CHECKPOINT_PERIOD", 1000),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        log = out / "log.txt"
        while first.poll() is None and time.monotonic() < deadline:  # until it wrote config.yaml
            if log.exists() and "Full config saved to" in log.read_text(errors="replace"):
                break
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended early"
        assert f'"pid": {first.pid}' in (out / LOCK_FILE).read_text()
        before = {n: md5s(out)[n] for n in ("notes.txt", "config.yaml")}
        started = time.monotonic()
        second = subprocess.run(train_command(out, "SOLVER.BASE_LR", 0.01234567, resume=True), env=env,
                                capture_output=True, text=True, timeout=180)
        assert second.returncode != 0
        assert f"OUTPUT_DIR {str(out)!r} is in use by another run: process {first.pid}" in second.stderr
        assert time.monotonic() - started < 120  # it did not wait for the first run
        assert first.poll() is None  # and the first run goes on
        assert {n: md5s(out)[n] for n in before} == before
        assert "0.01234567" not in (out / "log.txt").read_text()  # 8 digits: no logged metric has them
    finally:
        first.kill()
        first.wait()
    lock_output_dir(out)  # a killed holder's lock is released by the OS: the folder is usable
    unlock_output_dir(out)
    assert not (out / LOCK_FILE).exists()


def test_eval_only_without_weights_evaluates_the_last_checkpoint_into_its_own_folder(run_dir, caplog):
    out, before = run_dir
    results = train_net.main(run_args(out, flags=["--eval-only"]))
    assert results["bbox"]["AP"] >= 0
    after = md5s(out)
    assert {k: after[k] for k in before} == before  # the run's eval_results.json, config.yaml, ...
    own = out / "eval_only" / "model_final"
    assert json.loads((own / "eval_results.json").read_text()) == json.loads(
        (out / "eval_results.json").read_text())  # the final checkpoint, evaluated again
    assert f"evaluating OUTPUT_DIR's last checkpoint {out / 'model_final.pth'}" in caplog.text
    assert f"this evaluation writes to {own}" in caplog.text


def test_eval_only_without_any_weights_is_an_error_naming_the_key_and_folder(datasets, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    before = md5s(out)
    with pytest.raises(ValueError) as info:
        train_net.main(run_args(out, flags=["--eval-only"]))
    assert "--eval-only needs weights: MODEL.WEIGHTS is empty" in str(info.value)
    assert f"OUTPUT_DIR {str(out)!r} has no last_checkpoint" in str(info.value)
    assert md5s(out) == before


def test_orphaned_temp_files_of_a_killed_save_are_removed_on_the_next_start(run_dir):
    out, before = run_dir
    orphans = [".model_0000005.pth.0123abcd.tmp", ".last_checkpoint.89abcdef.tmp"]
    for name in orphans:
        (out / name).write_bytes(b"half a checkpoint")
    (out / ".cache.tmp").write_text("not ours")
    train_net.main(run_args(out, *FINISHED, *NO_EVAL, flags=["--resume"]))  # finished: nothing to do
    names = set(os.listdir(out))
    assert not names & set(orphans) and ".cache.tmp" in names
    after = md5s(out)
    assert all(after[n] == before[n] for n in before if n.endswith(".pth") or n == "notes.txt")


def test_resume_drops_metrics_rows_past_the_resumed_iteration(run_dir):
    out, _ = run_dir
    # As if killed in iteration 2 with last_checkpoint at iteration 0: row 1 (and half of row 2)
    # were written after it.
    (out / "last_checkpoint").write_text("model_0000000.pth")
    with open(out / "metrics.json", "a") as f:
        f.write('{"iteration": 2, "total_lo')
    assert iterations(out) == [0, 1]
    train_net.main(run_args(out, *FINISHED, *NO_EVAL, flags=["--resume"]))
    assert iterations(out) == [0, 1]  # 1 once, from the resumed run
    lines = (out / "metrics.json").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_runner_row_folder_with_only_its_stdout_log_still_starts(tmp_path):
    out = tmp_path / "row"
    out.mkdir()
    (out / "stdout.log").write_text("[run] fcos ...\n")
    assert runner.run_status(str(out)) == "new"
    assert prepare_output_dir(str(out), resume=False, overwrite=False) == []  # not refused
    unlock_output_dir(str(out))
    (out / "metrics.json").write_text('{"iteration": 0}\n')  # killed before its first checkpoint
    assert runner.run_status(str(out)) == "partial"  # so the runner passes --resume
    cmd = runner.build_command({"name": "row", "config": "c.yaml"}, str(tmp_path), resume=True)
    assert "--resume" in cmd and cmd[0] == sys.executable


def test_eval_only_with_a_checkpoint_without_quantizer_ranges_is_an_error_naming_the_file(run_dir, tmp_path):
    out, _ = run_dir
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if "quantizer" not in k}  # a float file
    weights = tmp_path / "float.pth"
    torch.save(state, weights)
    with pytest.raises(ValueError) as info:
        train_net.main(run_args(tmp_path / "eval", "MODEL.WEIGHTS", weights, flags=["--eval-only"]))
    assert f"MODEL.WEIGHTS={str(weights)!r} sets no range for" in str(info.value)
    assert "MODEL.QUANTIZATION.MODE calibrate" in str(info.value)
