"""Runner: finished rows are skipped, interrupted rows resumed with --resume, run.json written."""
import json
import os
import sys
import textwrap
import time

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


def test_run_set_resolves_classifier_and_double_init_weights(tmp_path):
    spec = tmp_path / "set.yaml"
    spec.write_text(textwrap.dedent("""
        root: runs
        runs:
          - {name: full, kind: classifier, args: [--epochs, 1]}
          - {name: low, kind: classifier, init_from: full, args: [--weight-method, lsq]}
          - {name: det, config: a.yaml, init_from: full}
          - {name: qb, config: b.yaml, init_from: low, extra_from: det}
    """))
    runs = {r["name"]: r for r in runner.load_run_set(str(spec))["runs"]}
    train, rename = runner.build_classifier_commands(runs["low"], "runs", python="python")
    assert train == ["python", "tools/train_classifier.py", "--out", "runs/low",
                     "--init", "runs/full/model_final.pth", "--weight-method", "lsq"]
    assert rename[2:] == ["runs/low/model_final.pth", "runs/low/detectron2.pth",
                          "--rules", "torchvision-resnet", "--prefix", "backbone.bottom_up."]
    det = runner.build_command(runs["det"], "runs", python="python")
    assert det[-2:] == ["MODEL.WEIGHTS", "runs/full/detectron2.pth"]
    qb = runner.build_command(runs["qb"], "runs", python="python")
    assert qb[-4:] == ["MODEL.WEIGHTS", "runs/low/detectron2.pth",
                       "MODEL.WEIGHT_EXTRA", "runs/det/model_final.pth"]


@pytest.mark.parametrize("rows, message", [
    ("- {name: c, kind: clasifier}", r"runs\[0\].kind='clasifier'; allowed"),
    ("- {name: d, config: a.yaml}\n- {name: c, kind: classifier, init_from: d}",
     r"classifier row is initialized only from an earlier classifier"),
    ("- {name: c, kind: classifier}\n- {name: d, config: a.yaml, extra_from: c}",
     r"runs\[1\].extra_from='c' is not an earlier detector run"),
    ("- {name: d, config: a.yaml, extra_from: later}\n- {name: later, config: a.yaml}",
     r"extra_from='later' is not an earlier detector run"),
])
def test_run_set_rejects_bad_wiring(tmp_path, rows, message):
    spec = tmp_path / "set.yaml"
    spec.write_text("root: runs\nruns:\n" + textwrap.indent(rows, "  ") + "\n")
    with pytest.raises(ValueError, match=message):
        runner.load_run_set(str(spec))


FAKE_CLASSIFIER = textwrap.dedent("""
    import json, os, sys
    if sys.argv[1] == "rename":
        open(sys.argv[3], "w").write("renamed")
        sys.exit(0)
    out = sys.argv[sys.argv.index("--out") + 1]
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "model_final.pth"), "w").write("weights")
    json.dump({"val_acc": 0.875, "train_acc": 0.9, "epochs": 2, "seed": 7},
              open(os.path.join(out, "metrics.json"), "w"))
""")


def test_classifier_row_trains_renames_and_records(tmp_path, monkeypatch):
    script = tmp_path / "fake_classifier.py"
    script.write_text(FAKE_CLASSIFIER)
    real = runner.build_classifier_commands

    def build(run, root, python=sys.executable):
        train, rename = real(run, root, python=python)
        if python != sys.executable:
            return [train, rename]
        return [[sys.executable, str(script)] + train[2:], [sys.executable, str(script), "rename"] + rename[2:]]

    monkeypatch.setattr(runner, "build_classifier_commands", build)
    monkeypatch.setattr(runner, "git_commit", lambda repo=".": "feed")
    run = {"name": "full", "kind": "classifier", "args": ["--epochs", 2], "meta": {"quant": "FP32"}}
    record = runner.execute(run, str(tmp_path / "runs"), log=lambda m: None)
    assert (tmp_path / "runs" / "full" / "detectron2.pth").read_text() == "renamed"
    assert record["metrics"] == {"classification": {"val_acc": 0.875, "train_acc": 0.9, "epochs": 2}}
    assert record["seed"] == 7 and record["kind"] == "classifier" and record["git_commit"] == "feed"
    assert record["command"].startswith("python tools/train_classifier.py --out ")
    assert " && python tools/rename_checkpoint.py " in record["command"]


def test_run_set_rejects_unknown_only_names(tmp_path):
    spec = tmp_path / "set.yaml"
    spec.write_text("root: runs\nruns:\n  - {name: a, config: a.yaml}\n")
    with pytest.raises(ValueError, match=r"--only: \['b'\] are not rows of"):
        runner.run_set(str(spec), only=["b"])


@pytest.mark.parametrize("run_set", ["experiments/demo.yaml", "experiments/digits.yaml"])
def test_committed_run_sets_load_and_point_at_real_configs(run_set):
    from conftest import REPO
    spec = runner.load_run_set(os.path.join(REPO, run_set))
    for run in spec["runs"]:
        if run["kind"] == "detector":
            assert os.path.isfile(os.path.join(REPO, run["config"])), run["config"]


def test_demo_is_the_recipe_in_miniature():
    from conftest import REPO
    runs = {r["name"]: r for r in runner.load_run_set(os.path.join(REPO, "experiments/demo.yaml"))["runs"]}
    kinds = [r["kind"] for r in runs.values()]
    assert kinds[:2] == ["classifier", "classifier"] and "detector" in kinds
    qbackbone = [r for r in runs.values() if r.get("extra_from")]
    assert qbackbone and all(runs[r["init_from"]]["kind"] == "classifier" for r in qbackbone)
    assert all(runs[r["extra_from"]]["meta"]["bits"] == "32/32" for r in qbackbone)


def test_child_progress_reaches_the_console_while_the_child_runs(tmp_path):
    """A child's "eta:" line is echoed within seconds, not when the child's buffer fills or it exits."""
    child = tmp_path / "child.py"
    child.write_text("import time\nprint('iter: 1  eta: 0:00:05')\ntime.sleep(6)\nprint('done')\n")
    seen = []
    start = time.time()
    code = runner._stream([sys.executable, str(child)], str(tmp_path / "out.log"),
                          lambda m: seen.append((time.time() - start, m)))
    assert code == 0 and len(seen) == 1 and "eta: 0:00:05" in seen[0][1]
    assert seen[0][0] < 4, f"progress line arrived after {seen[0][0]:.1f} s"
    assert (tmp_path / "out.log").read_text().splitlines() == ["iter: 1  eta: 0:00:05", "done"]


def test_rows_are_announced_with_their_position_and_elapsed_time():
    assert runner.progress(time.time() - 65, [], 3) == "elapsed 0:01:05"
    assert runner.progress(time.time() - 10, [60.0, 120.0], 2) == "elapsed 0:00:10, about 0:03:00 left"


def test_row_whose_parent_checkpoint_is_gone_fails_before_it_starts(tmp_path, fake_train):
    """A parent recorded as finished on another machine (run.json committed, *.pth not): the
    child fails with a message naming both rows and the file, and leaves no output directory."""
    root = tmp_path / "runs"
    (root / "parent").mkdir(parents=True)
    (root / "parent" / "run.json").write_text(json.dumps({"name": "parent", "status": "done"}))
    child = dict(RUN, name="child", init_from="parent")
    with pytest.raises(RuntimeError, match=r"child: .*parent/model_final\.pth \(from row 'parent'\) "
                                           r"is missing, although parent's run\.json says it finished"):
        runner.execute(child, str(root), log=lambda m: None)
    assert fake_train == [] and not (root / "child").exists()

    double = dict(RUN, name="qb", init_from="low", init_file="detectron2.pth", extra_from="parent")
    (root / "low").mkdir()
    (root / "low" / "detectron2.pth").write_text("weights")
    with pytest.raises(RuntimeError, match=r"qb: .*parent/model_final\.pth \(from row 'parent'\)"):
        runner.execute(double, str(root), log=lambda m: None)
    (root / "parent" / "model_final.pth").write_text("weights")
    with pytest.raises(RuntimeError, match=r"qb failed \(exit 3\)"):  # it started: FAKE_TRAIN's interruption
        runner.execute(double, str(root), log=lambda m: None)
    assert fake_train[0][-4:] == ["MODEL.WEIGHTS", f"{root}/low/detectron2.pth",
                                  "MODEL.WEIGHT_EXTRA", f"{root}/parent/model_final.pth"]


def test_row_whose_parent_has_not_run_says_so(tmp_path, fake_train):
    classifier = {"name": "low", "kind": "classifier", "init_from": "full"}
    with pytest.raises(RuntimeError, match=r"low: .*full/model_final\.pth \(from row 'full'\) does "
                                           r"not exist: run full first"):
        runner.execute(classifier, str(tmp_path / "runs"), log=lambda m: None)
    assert fake_train == []


def test_run_record_names_the_machine_and_thread_count(tmp_path, fake_train, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    root = str(tmp_path / "runs")
    run = dict(RUN, name="threads")
    with pytest.raises(RuntimeError):
        runner.execute(run, root, log=lambda m: None)
    record = runner.execute(run, root, log=lambda m: None)
    machine = json.load(open(f"{root}/threads/run.json"))["machine"]
    assert machine == record["machine"]
    assert machine["omp_num_threads"] == "2" and machine["cores"] == os.cpu_count()
    assert isinstance(machine["cpu"], str) and machine["cpu"]
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runner.machine_info()["omp_num_threads"] is None
