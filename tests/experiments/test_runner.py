"""Runner: finished rows are skipped, interrupted rows resumed with --resume, run.json written."""
import json
import sys
import textwrap

import pytest

from quant_det.experiments import runner

# Stands in for tools/train_net.py: without --resume it leaves a checkpoint and dies (an
# interruption); with --resume it writes what a finished detectron2 run leaves in OUTPUT_DIR.
FAKE_TRAIN = textwrap.dedent("""
    import json, os, sys
    out = sys.argv[sys.argv.index("OUTPUT_DIR") + 1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "calls.txt"), "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\\n")
    if "--resume" not in sys.argv:
        open(os.path.join(out, "last_checkpoint"), "w").write("model_0000099.pth")
        sys.exit(3)
    json.dump({"bbox": {"AP": 12.5, "AP50": 30.0, "AP75": 10.0}},
              open(os.path.join(out, "eval_results.json"), "w"))
    open(os.path.join(out, "config.yaml"), "w").write("SEED: 42\\n")
""")
RUN = {"name": "fcos", "config": "configs/x.yaml", "opts": ["SOLVER.MAX_ITER", 10],
       "meta": {"task": "FCOS", "bits": "4/4"}}


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    """Point the runner at FAKE_TRAIN; return the list of commands it executed."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    real_build = runner.build_command
    executed = []

    def build(run, root, python=sys.executable, resume=False):
        cmd = real_build(run, root, python=python, resume=resume)
        if python == sys.executable:  # the executed command (not the one recorded for humans)
            cmd = [sys.executable, str(script)] + cmd[2:]
            executed.append(cmd)
        return cmd

    monkeypatch.setattr(runner, "build_command", build)
    monkeypatch.setattr(runner, "git_commit", lambda repo=".": "0123abc")
    return executed


def test_interrupted_run_is_resumed_with_resume_flag(tmp_path, fake_train):
    root = str(tmp_path / "runs")
    with pytest.raises(RuntimeError, match=r"fcos failed \(exit 3\)"):
        runner.execute(RUN, root, log=lambda m: None)
    assert runner.run_status(f"{root}/fcos") == "partial"
    record = runner.execute(RUN, root, log=lambda m: None)
    assert ["--resume" in cmd for cmd in fake_train] == [False, True]
    assert fake_train[1][2:6] == ["--config-file", "configs/x.yaml", "--resume", "OUTPUT_DIR"]
    assert record["resumed"] is True and record["status"] == "done"
    assert record["seed"] == 42 and record["git_commit"] == "0123abc"
    assert record["metrics"]["bbox"]["AP"] == 12.5 and record["opts"] == ["SOLVER.MAX_ITER", "10"]
    assert record["command"] == ("python tools/train_net.py --config-file configs/x.yaml "
                                 f"OUTPUT_DIR {root}/fcos SOLVER.MAX_ITER 10")
    with open(f"{root}/fcos/run.json") as f:
        assert json.load(f) == record


def test_finished_run_is_skipped(tmp_path, fake_train):
    root = tmp_path / "runs"
    (root / "fcos").mkdir(parents=True)
    done = {"name": "fcos", "status": "done", "metrics": {"bbox": {"AP": 1.0}}}
    (root / "fcos" / "run.json").write_text(json.dumps(done))
    messages = []
    assert runner.execute(RUN, str(root), log=messages.append) == done
    assert fake_train == [] and messages == ["[skip] fcos: finished"]
