"""OUTPUT_DIR of a run: never mix two runs in one folder, lock it while a run uses it.

- `prepare_output_dir` (called once per run, before anything is written): takes an exclusive
  lock on the folder for the lifetime of the process (a second run into it fails at once, naming
  the first one's process); refuses a folder that already holds a run (`run_files`) unless the
  run is resumed or `overwrite` is given, which first deletes that run's files; removes the
  hidden temp files a save killed mid-write leaves behind.
- `drop_metrics_from`: on --resume, metrics.json rows of iterations the resumed run will redo
  are dropped (not written twice).
- `eval_only_dir`: where a separate --eval-only run in a folder holding a run writes its results,
  so that they never replace the training run's eval_results.json.
- `write_results`: the run's evaluation results, written atomically to eval_results.json.

Example:
    notes = prepare_output_dir("output/fcos", resume=False, overwrite=False)  # or ValueError
    ...
    unlock_output_dir("output/fcos")
"""
import glob
import json
import os
import re
import shutil
import socket
import sys
import time
from typing import Dict, List, Optional

from detectron2.utils import comm

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

LOCK_FILE = ".quant_det.lock"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "eval_results.json"
EVAL_ONLY_DIR = "eval_only"
# What a train_net.py run leaves (checkpoints, metrics, results; run.json is the experiment
# runner's record of the run). A folder with none of these (e.g. only the runner's stdout.log)
# holds no run.
RUN_MARKERS = ("last_checkpoint", "model_*.pth", METRICS_FILE, RESULTS_FILE, "run.json")
# Deleted with the run by `overwrite` (logs, config, events, inference output, eval-only results).
RUN_FILES = RUN_MARKERS + ("log.txt", "log.txt.rank*", "config.yaml", "events.out.tfevents.*",
                           "inference", EVAL_ONLY_DIR)
# Temp files of a save killed mid-write: checkpointer.atomic_write and write_results.
ORPHAN_TMP = re.compile(r"^(\.(model_.*\.pth|last_checkpoint)\.[0-9a-f]{8}\.tmp|eval_results\.json\.tmp)$")

_HELD: Dict[str, int] = {}  # realpath of a locked OUTPUT_DIR -> fd of its lock file (this process)


class OutputDirInUse(RuntimeError):
    """Another process holds the lock of OUTPUT_DIR."""


def run_files(out_dir: str) -> List[str]:
    """The names of the files in `out_dir` that show it holds a run (RUN_MARKERS), sorted."""
    found = set()
    for pattern in RUN_MARKERS:
        found.update(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(out_dir), pattern)))
    return sorted(found)


def last_checkpoint_file(out_dir: str) -> Optional[str]:
    """The checkpoint `out_dir/last_checkpoint` names (a path, which may be missing), or None."""
    tag = os.path.join(out_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        return None
    with open(tag) as f:
        return os.path.join(out_dir, f.read().strip())


def eval_only_dir(out_dir: str, weights: str) -> str:
    """`out_dir/eval_only/<weights file name without extension>`."""
    stem = os.path.splitext(os.path.basename(weights.rstrip("/")))[0] or "weights"
    return os.path.join(out_dir, EVAL_ONLY_DIR, stem)


def _describe_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        info = json.loads(os.read(fd, 65536).decode("utf-8", "replace"))
        return (f"process {info['pid']} on {info['host']} (started {info['started']}: "
                f"{info['command']})")
    except (ValueError, KeyError, TypeError):
        return "a process that is just starting"


def lock_output_dir(out_dir: str) -> None:
    """Create `out_dir` and lock it (flock on `out_dir/.quant_det.lock`) until `unlock_output_dir`
    or the end of the process; OutputDirInUse naming the holder if another process has it.

    Re-locking a folder this process already holds does nothing. The lock file records the
    holder's pid, host, start time and command line.
    """
    real = os.path.realpath(out_dir)
    if fcntl is None or real in _HELD:
        return
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise OutputDirInUse(f"OUTPUT_DIR {out_dir!r} is in use by another run: {holder}; "
                                 f"wait for it to end, or choose another OUTPUT_DIR") from None
        try:  # the previous holder unlinks the file on release: make sure ours is the current one
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode("utf-8"))
    _HELD[real] = fd


def unlock_output_dir(out_dir: str) -> None:
    """Release and remove the lock `lock_output_dir` took (nothing if this process has none)."""
    fd = _HELD.pop(os.path.realpath(out_dir), None)
    if fd is None:
        return
    try:
        os.unlink(os.path.join(out_dir, LOCK_FILE))
    except FileNotFoundError:
        pass
    os.close(fd)


def clear_previous_run(out_dir: str) -> List[str]:
    """Delete the RUN_FILES in `out_dir`; return the names deleted."""
    removed = []
    for pattern in RUN_FILES:
        for path in sorted(glob.glob(os.path.join(glob.escape(out_dir), pattern))):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(os.path.basename(path))
    return removed


def remove_orphaned_tmp(out_dir: str) -> List[str]:
    """Delete the temp files of saves killed mid-write (ORPHAN_TMP); return their names."""
    names = sorted(n for n in os.listdir(out_dir) if ORPHAN_TMP.match(n))
    for name in names:
        os.unlink(os.path.join(out_dir, name))
    return names


def prepare_output_dir(out_dir: str, *, resume: bool, overwrite: bool, refuse: bool = True) -> List[str]:
    """Lock `out_dir`, then refuse it if it holds a run (unless `resume`, `overwrite` or not
    `refuse`), delete that run if `overwrite`, remove orphaned temp files; return log lines.

    On an error the lock is released and nothing in `out_dir` has changed.
    """
    lock_output_dir(out_dir)
    try:
        found = run_files(out_dir)
        if found and refuse and not (resume or overwrite):
            last = last_checkpoint_file(out_dir)
            shown = [f"last_checkpoint -> {os.path.basename(last)}" if n == "last_checkpoint" else n
                     for n in found]
            raise ValueError(
                f"OUTPUT_DIR {out_dir!r} already holds a run ({', '.join(shown[:6])}"
                f"{', ...' if len(shown) > 6 else ''}); pass --resume to continue it, or --overwrite "
                f"to delete it and start a new run, or choose another OUTPUT_DIR")
        notes = []
        if overwrite and found:
            notes.append(f"--overwrite: deleted the previous run in {out_dir}: "
                         f"{', '.join(clear_previous_run(out_dir))}")
        orphans = remove_orphaned_tmp(out_dir)
        if orphans:
            notes.append(f"removed temp files of an interrupted save: {', '.join(orphans)}")
        return notes
    except BaseException:
        unlock_output_dir(out_dir)
        raise


def drop_metrics_from(out_dir: str, iteration: int) -> int:
    """Truncate `out_dir/metrics.json` before its first row of an iteration >= `iteration` (or
    its first unreadable line, e.g. one cut by a kill); return the number of lines dropped.

    Truncation in place: detectron2's JSONWriter already holds the file open for appending.
    """
    path = os.path.join(out_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as f:
        lines = f.readlines()
    offset = 0
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            keep = row.get("iteration", -1) < iteration if line.endswith(b"\n") else False
        except (ValueError, AttributeError, TypeError):
            keep = not line.strip()
        if not keep:
            os.truncate(path, offset)
            return len(lines) - i
        offset += len(line)
    return 0


def write_json_atomic(path: str, data, indent: int = 2, sort_keys: bool = True,
                      newline: bool = False) -> None:
    """Write `data` as JSON to `path` atomically: into `path`.tmp, fsynced, then renamed over `path`
    (a reader never sees a partial file; a crash leaves the previous file whole)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent, sort_keys=sort_keys)
        if newline:
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_results(out_dir: str, results) -> None:
    """Write evaluation results to `out_dir`/eval_results.json atomically (main process only;
    nothing for empty results)."""
    if not comm.is_main_process() or not results:
        return
    write_json_atomic(os.path.join(out_dir, RESULTS_FILE), results)
