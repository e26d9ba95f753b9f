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

Rows are detectors (tools/train_net.py) unless `kind: classifier`: steps (1)-(3) of the recipe,
tools/train_classifier.py `--out <root>/<name> [--init <root>/<init_from>/model_final.pth] <args>`
then tools/rename_checkpoint.py to `<root>/<name>/detectron2.pth` (detectron2 backbone names).
A detector's `init_from` naming a classifier row loads that detectron2.pth as MODEL.WEIGHTS;
`extra_from: <detector row>` sets MODEL.WEIGHT_EXTRA to its model_final.pth (double init):

      - name: backbone_full
        kind: classifier
        args: [--epochs, 3]
      - name: fcos_qbackbone_w2a2
        config: configs/digits/quant/fcos_R_18_FPN_FullBN_qbackbone_w2a2_lsq.yaml
        init_from: backbone_low_w2a2   # MODEL.WEIGHTS <- <root>/backbone_low_w2a2/detectron2.pth
        extra_from: fcos_fp32          # MODEL.WEIGHT_EXTRA <- <root>/fcos_fp32/model_final.pth

Each finished row leaves `<root>/<name>/run.json` (the provenance the dashboard requires):
config (classifier rows: the tool), command, git commit, seed, wall time, status and the
metrics (bbox AP for detectors, top-1 accuracy for classifiers).
"""
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from datetime import timedelta

from ..engine.output_dir import run_files, write_json_atomic
from .records import read_json, read_yaml

RUN_FILE = "run.json"
RESULTS_FILE = "eval_results.json"
KINDS = ("detector", "classifier")
CLASSIFIER_TOOL = "tools/train_classifier.py"
CLASSIFIER_METRICS = "metrics.json"  # written by quant_det.experiments.classifier
BACKBONE_FILE = "detectron2.pth"
BACKBONE_PREFIX = "backbone.bottom_up."
# Lines of train_net.py's log worth echoing: detectron2's periodic "eta: ..." line, errors.
PROGRESS = re.compile(r"eta: |Error|Traceback|calibration batch")


# Row fields and their types (besides name/config/kind, checked in load_run_set).
ROW_TYPES = {"opts": list, "args": list, "meta": dict, "init_from": str, "extra_from": str}


def _check_row(path, i, run):
    """ValueError naming `path`, runs[i] and the field if the row is not a mapping of the right types."""
    if not isinstance(run, dict):
        raise ValueError(f"{path}: runs[{i}] is a {type(run).__name__} ({run!r}), not a mapping "
                         f"with name/config/...")
    for field in ("name", "config", "kind"):
        if field in run and not isinstance(run[field], str):
            raise ValueError(f"{path}: runs[{i}].{field}={run[field]!r} is not a string")
    for field, kind in ROW_TYPES.items():
        if run.get(field) is not None and not isinstance(run[field], kind):
            raise ValueError(f"{path}: runs[{i}].{field}={run[field]!r} is not a "
                             f"{'list' if kind is list else 'mapping' if kind is dict else 'string'}")


def load_run_set(path):
    """Parse a run-set yaml; raise a one-line ValueError naming the file and the bad entry.

    Resolves each detector row's `init_from` to the file it loads (`init_file`: model_final.pth
    of a detector row, detectron2.pth of a classifier row).
    """
    spec = read_yaml(path)
    if not isinstance(spec, dict) or "runs" not in spec or "root" not in spec:
        raise ValueError(f"{path}: a run set needs top-level 'root' and 'runs' keys")
    if not isinstance(spec["runs"], list):
        raise ValueError(f"{path}: 'runs' is a {type(spec['runs']).__name__}, not a list of rows "
                         f"(write each row as '- name: ...')")
    if not isinstance(spec["root"], str):
        raise ValueError(f"{path}: 'root'={spec['root']!r} is not a directory path")
    kinds = {}
    for i, run in enumerate(spec["runs"]):
        _check_row(path, i, run)
        kind = run.setdefault("kind", "detector")
        if kind not in KINDS:
            raise ValueError(f"{path}: runs[{i}].kind={kind!r}; allowed: {list(KINDS)}")
        missing = {"name"} | ({"config"} if kind == "detector" else set())
        missing -= set(run)
        if missing:
            raise ValueError(f"{path}: runs[{i}] lacks {sorted(missing)}")
        if run["name"] in kinds:
            raise ValueError(f"{path}: runs[{i}] repeats name {run['name']!r}")
        init, extra = run.get("init_from"), run.get("extra_from")
        if init and init not in kinds:
            raise ValueError(f"{path}: runs[{i}].init_from={init!r} is not an earlier run")
        if kind == "classifier" and (extra or (init and kinds[init] != "classifier")):
            raise ValueError(f"{path}: runs[{i}] ({run['name']}): a classifier row is initialized "
                             "only from an earlier classifier row (init_from), never extra_from")
        if extra and kinds.get(extra) != "detector":
            raise ValueError(f"{path}: runs[{i}].extra_from={extra!r} is not an earlier detector run")
        if kind == "detector" and init:
            run["init_file"] = BACKBONE_FILE if kinds[init] == "classifier" else "model_final.pth"
        kinds[run["name"]] = kind
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


def machine_info():
    """{"cpu": model name, "cores": os.cpu_count(), "omp_num_threads": $OMP_NUM_THREADS or None}:
    where a row ran. The children inherit this environment, and on CPU both the CPU model and the
    thread count change a run's numbers (reduction order), so a re-run that differs can be told
    apart from a bug."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS")
    return {"cpu": cpu, "cores": os.cpu_count(), "omp_num_threads": threads}


def run_status(out_dir):
    """'done' (run.json says so), 'partial' (train_net.py output exists: a checkpoint, or metrics
    of a run killed before its first checkpoint, which --resume restarts) or 'new'."""
    info = os.path.join(out_dir, RUN_FILE)
    if os.path.exists(info) and read_json(info).get("status") == "done":
        return "done"
    if run_files(out_dir):
        return "partial"
    return "new"


def build_command(run, root, python=sys.executable, resume=False):
    """The train_net.py command line of one detector row."""
    out_dir = os.path.join(root, run["name"])
    cmd = [python, "tools/train_net.py", "--config-file", run["config"]]
    if resume:
        cmd.append("--resume")
    opts = ["OUTPUT_DIR", out_dir] + [str(o) for o in run.get("opts", [])]
    if run.get("init_from"):
        opts += ["MODEL.WEIGHTS", os.path.join(root, run["init_from"],
                                               run.get("init_file", "model_final.pth"))]
    if run.get("extra_from"):
        opts += ["MODEL.WEIGHT_EXTRA", os.path.join(root, run["extra_from"], "model_final.pth")]
    return cmd + opts


def build_classifier_commands(run, root, python=sys.executable):
    """A classifier row's two command lines: train (or QAT-fine-tune) it, rename it for detectron2."""
    out_dir = os.path.join(root, run["name"])
    train = [python, CLASSIFIER_TOOL, "--out", out_dir]
    if run.get("init_from"):
        train += ["--init", os.path.join(root, run["init_from"], "model_final.pth")]
    rename = [python, "tools/rename_checkpoint.py", os.path.join(out_dir, "model_final.pth"),
              os.path.join(out_dir, BACKBONE_FILE), "--rules", "torchvision-resnet",
              "--prefix", BACKBONE_PREFIX]
    return [train + [str(a) for a in run.get("args", [])], rename]


def input_files(run, root):
    """[(row it comes from, path), ...]: the checkpoints a row loads (init_from, extra_from)."""
    files = []
    if run.get("init_from"):
        name = "model_final.pth" if run.get("kind") == "classifier" else run.get("init_file", "model_final.pth")
        files.append((run["init_from"], os.path.join(root, run["init_from"], name)))
    if run.get("extra_from"):
        files.append((run["extra_from"], os.path.join(root, run["extra_from"], "model_final.pth")))
    return files


def check_inputs(run, root):
    """RuntimeError naming the row, its source row and the file if a checkpoint it loads is missing.

    Checkpoints are not committed (*.pth is gitignored), so on a new machine a row can be recorded
    as finished while its checkpoint is gone: say so instead of letting train_net.py fail on a path.
    """
    for source, path in input_files(run, root):
        if os.path.exists(path):
            continue
        if run_status(os.path.join(root, source)) == "done":
            raise RuntimeError(
                f"{run['name']}: {path} (from row {source!r}) is missing, although {source}'s "
                f"{RUN_FILE} says it finished: checkpoints are not committed, so it was trained on "
                f"another machine. Re-run {source} (move its {RUN_FILE} away) or add a second run "
                f"of its command under a new name; a re-run on another CPU is not bit-identical, so "
                f"rows already trained from the first run keep their own record")
        raise RuntimeError(f"{run['name']}: {path} (from row {source!r}) does not exist: run "
                           f"{source} first (--only runs the named rows in the file's order)")


def execute(run, root, log=print):
    """Run one row unless finished; return its run.json dict."""
    out_dir = os.path.join(root, run["name"])
    status = run_status(out_dir)
    if status == "done":
        log(f"[skip] {run['name']}: finished")
        return read_json(os.path.join(out_dir, RUN_FILE))
    check_inputs(run, root)
    os.makedirs(out_dir, exist_ok=True)
    classifier = run.get("kind") == "classifier"
    if classifier:  # a few minutes, not checkpointed: an interrupted one starts over
        status = "new"
        cmds, shown = build_classifier_commands(run, root), build_classifier_commands(run, root, "python")
    else:
        cmds = [build_command(run, root, resume=status == "partial")]
        shown = [build_command(run, root, python="python")]
    commit = git_commit()  # the code that runs, not the code present when the run ends
    start = time.time()
    for cmd in cmds:
        log(f"[{'resume' if status == 'partial' else 'run'}] {run['name']}: {shlex.join(cmd)}")
        returncode = _stream(cmd, os.path.join(out_dir, "stdout.log"), log)
        if returncode != 0:
            raise RuntimeError(f"{run['name']} failed (exit {returncode}); see {out_dir}/stdout.log")
    if classifier:
        found = read_json(os.path.join(out_dir, CLASSIFIER_METRICS))
        metrics = {"classification": {k: found[k] for k in ("val_acc", "train_acc", "epochs")}}
        seed, config = found["seed"], CLASSIFIER_TOOL
    else:
        metrics = read_json(os.path.join(out_dir, RESULTS_FILE))
        seed, config = _seed_from_config(os.path.join(out_dir, "config.yaml")), run["config"]
    record = {
        "name": run["name"], "kind": run.get("kind", "detector"), "config": config,
        "opts": [str(o) for o in run.get("opts", run.get("args", []))],
        "init_from": run.get("init_from"), "extra_from": run.get("extra_from"),
        "meta": run.get("meta", {}),
        "command": " && ".join(shlex.join(c) for c in shown),
        "git_commit": commit, "machine": machine_info(), "seed": seed,
        "wall_time_s": round(time.time() - start, 1),
        "status": "done", "metrics": metrics, "resumed": status == "partial",
    }
    write_json_atomic(os.path.join(out_dir, RUN_FILE), record)
    return record


def _stream(cmd, log_path, log):
    """Run `cmd`, append all its output to `log_path`, echo progress (ETA) lines as they come;
    return the exit code. The child runs unbuffered, so a line reaches the console when printed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "a") as out, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env=env) as proc:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            match = PROGRESS.search(line)
            if match:
                log("    " + line[match.start():].rstrip())
    return proc.returncode


def _seed_from_config(path):
    config = read_yaml(path)
    return config.get("SEED") if isinstance(config, dict) else None


def run_set(path, only=None, log=print, root=None):
    """Run every row of the run set at `path` (or the named ones) under `root` (default: the
    set's own root); return their records."""
    spec = load_run_set(path)
    unknown = sorted(set(only or ()) - {run["name"] for run in spec["runs"]})
    if unknown:
        raise ValueError(f"--only: {unknown} are not rows of {path}")
    rows = [run for run in spec["runs"] if not only or run["name"] in only]
    records, start, ran = [], time.time(), []
    for i, run in enumerate(rows, 1):
        log(f"[row {i}/{len(rows)}] {run['name']}  {progress(start, ran, len(rows) - i + 1)}")
        row_start = time.time()
        records.append(execute(run, root or spec["root"], log=log))
        if time.time() - row_start > 5:  # skipped rows do not inform the estimate
            ran.append(time.time() - row_start)
    return records


def progress(start, durations, remaining):
    """"elapsed 0:12:00, about 0:30:00 left" from the rows run so far (a crude mean-row estimate)."""
    text = f"elapsed {timedelta(seconds=round(time.time() - start))}"
    if durations:
        text += f", about {timedelta(seconds=round(sum(durations) / len(durations) * remaining))} left"
    return text

