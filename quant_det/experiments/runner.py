"""Run a named set of experiment rows, skipping finished ones and resuming interrupted ones.

A run set is a yaml file (e.g. `experiments/demo.yaml`):

    root: experiments/demo            # each row's OUTPUT_DIR is <root>/<name>
    runs:
      - name: fcos_fp32
        config: configs/digits/fcos_R_18_FPN.yaml
        opts: [SOLVER.MAX_ITER, 600]
      - name: fcos_w4a4_lsq
        config: configs/digits/quant/fcos_R_18_FPN_w4a4_lsq.yaml
        init_from: fcos_fp32           # MODEL.WEIGHTS <- <root>/fcos_fp32/model_final.pth
        meta: {task: FCOS, quant: LSQ, bits: "4/4"}   # free-form, shown by the dashboard

Each finished row leaves `<root>/<name>/run.json` (the provenance the dashboard requires):
config, command, git commit, seed, wall time, status and the bbox metrics.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time

import yaml

RUN_FILE = "run.json"
RESULTS_FILE = "eval_results.json"
# Lines of train_net.py's log worth echoing: detectron2's periodic "eta: ..." line, errors.
PROGRESS = re.compile(r"eta: |Error|Traceback|calibration batch")


def load_run_set(path):
    """Parse a run-set yaml; raise ValueError naming the file and the bad entry."""
    with open(path) as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict) or "runs" not in spec or "root" not in spec:
        raise ValueError(f"{path}: a run set needs top-level 'root' and 'runs' keys")
    names = set()
    for i, run in enumerate(spec["runs"]):
        missing = {"name", "config"} - set(run)
        if missing:
            raise ValueError(f"{path}: runs[{i}] lacks {sorted(missing)}")
        if run["name"] in names:
            raise ValueError(f"{path}: runs[{i}] repeats name {run['name']!r}")
        if run.get("init_from") and run["init_from"] not in names:
            raise ValueError(f"{path}: runs[{i}].init_from={run['init_from']!r} is not an earlier run")
        names.add(run["name"])
    return spec


def git_commit(repo="."):
    """The current commit (with '+dirty' if the work tree has changes), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_status(out_dir):
    """'done' (run.json says so), 'partial' (a checkpoint exists) or 'new'."""
    info = os.path.join(out_dir, RUN_FILE)
    if os.path.exists(info):
        with open(info) as f:
            if json.load(f).get("status") == "done":
                return "done"
    if os.path.exists(os.path.join(out_dir, "last_checkpoint")):
        return "partial"
    return "new"


def build_command(run, root, python=sys.executable, resume=False):
    """The train_net.py command line of one row."""
    out_dir = os.path.join(root, run["name"])
    cmd = [python, "tools/train_net.py", "--config-file", run["config"]]
    if resume:
        cmd.append("--resume")
    opts = ["OUTPUT_DIR", out_dir] + [str(o) for o in run.get("opts", [])]
    if run.get("init_from"):
        opts += ["MODEL.WEIGHTS", os.path.join(root, run["init_from"], "model_final.pth")]
    return cmd + opts


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def execute(run, root, log=print):
    """Run one row unless finished; return its run.json dict."""
    out_dir = os.path.join(root, run["name"])
    status = run_status(out_dir)
    if status == "done":
        log(f"[skip] {run['name']}: finished")
        with open(os.path.join(out_dir, RUN_FILE)) as f:
            return json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    cmd = build_command(run, root, resume=status == "partial")
    log(f"[{'resume' if status == 'partial' else 'run'}] {run['name']}: {shlex.join(cmd)}")
    commit = git_commit()  # the code that runs, not the code present when the run ends
    start = time.time()
    returncode = _stream(cmd, os.path.join(out_dir, "stdout.log"), log)
    if returncode != 0:
        raise RuntimeError(f"{run['name']} failed (exit {returncode}); see {out_dir}/stdout.log")
    with open(os.path.join(out_dir, RESULTS_FILE)) as f:
        metrics = json.load(f)
    seed = _seed_from_config(os.path.join(out_dir, "config.yaml"))
    record = {
        "name": run["name"], "config": run["config"], "opts": [str(o) for o in run.get("opts", [])],
        "init_from": run.get("init_from"), "meta": run.get("meta", {}),
        "command": shlex.join(build_command(run, root, python="python")),
        "git_commit": commit, "seed": seed, "wall_time_s": round(time.time() - start, 1),
        "status": "done", "metrics": metrics, "resumed": status == "partial",
    }
    _write_json(os.path.join(out_dir, RUN_FILE), record)
    return record


def _stream(cmd, log_path, log):
    """Run `cmd`, append all its output to `log_path`, echo progress (ETA) lines; return exit code."""
    with open(log_path, "a") as out, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            out.write(line)
            match = PROGRESS.search(line)
            if match:
                log("    " + line[match.start():].rstrip())
    return proc.returncode


def _seed_from_config(path):
    with open(path) as f:
        return yaml.safe_load(f).get("SEED")


def run_set(path, only=None, log=print):
    """Run every row of the run set at `path` (or the named ones); return their records."""
    spec = load_run_set(path)
    records = []
    for run in spec["runs"]:
        if only and run["name"] not in only:
            continue
        records.append(execute(run, spec["root"], log=log))
    return records
