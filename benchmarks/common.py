"""Helpers shared by the benchmark scripts: CPU/wall clocks, the machine description, JSON output
and rendering a markdown block into README.md between `<!-- bench:NAME:begin/end -->` markers.

CPU time (`time.process_time`, all threads of this process) is the primary measure: on a shared
machine wall times swing with the other jobs, CPU time much less; ratios are always taken between
runs in the same process. Wall ratios are printed beside them.
"""
import datetime
import json
import os
import platform
import statistics
import time

from quant_det.engine.output_dir import write_json_atomic
from quant_det.experiments.records import markdown_table, replace_marked_section  # noqa: F401 (re-exported to the bench scripts)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


def clocks():
    """(cpu seconds of this process, wall seconds): subtract two readings for an interval."""
    return time.process_time(), time.perf_counter()


def elapsed(start):
    cpu, wall = clocks()
    return cpu - start[0], wall - start[1]


def median(values):
    return statistics.median(values) if values else float("nan")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(note=""):
    """What the numbers were measured on, and when."""
    import torch

    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if note:
        info["note"] = note
    return info


def machine_line(info):
    """One markdown line: date, CPU, threads, torch, load, note."""
    load = info.get("load_average_at_start")
    text = (f"{info['date']}, {info['cpu']} ({info['cores']} cores, {info['threads']} thread{'s' if info['threads'] != 1 else ''} used), "
            f"torch {info['torch']}")
    if load:
        text += f", load average {load[0]:.1f} at the start"
    if info.get("note"):
        text += f"; {info['note']}"
    return text


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, data, indent=1, sort_keys=False, newline=True)


def render_into(readme, name, markdown):
    """Replace the text between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->` in `readme`."""
    try:
        replace_marked_section(readme, f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->",
                               markdown)
    except ValueError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":  # re-render a saved result: python benchmarks/common.py RESULT.json NAME [README.md]
    import sys

    result, block = sys.argv[1], sys.argv[2]
    target = sys.argv[3] if len(sys.argv) > 3 else os.path.join(REPO, "README.md")
    with open(result) as f:
        render_into(target, block, json.load(f)["markdown"])
    print(f"rendered {result} into {target} ({block})")
