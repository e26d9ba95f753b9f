"""Build DASHBOARD.md, an AP-vs-bits plot and a README section from finished runs' files.

Every number comes from a run directory written by `quant_det.experiments.runner`:
`run.json` (provenance + bbox metrics) and detectron2's `config.yaml` next to it. A run.json
without provenance is refused, never silently shown. The original project's COCO numbers
(`experiments/reported/*.yaml`) are shown in a separate table, marked as not reproduced here.

Each detector row shows its AP difference to its FP32 parent (`meta.parent`, else the row it was
double-initialized from, `extra_from`, else `init_from`) and to its control (`meta.control`: the
parent fine-tuned with the same schedule and quantization off), both rows of the same run set.
A row named in another row's `meta.supersedes` (as "<run set>/<row>") is kept, marked superseded.

"A/W" is activation bits / weight bits everywhere (the original dashboard's convention), so a
run's `meta.bits` must be written as "A/W", e.g. "4/4" or "32/32".

Run ids, bit widths and the parent/control differences are in `comparisons.py`, the plot in
`plot.py`.

Example:
    build(["experiments/demo"], "DASHBOARD.md", readme="README.md",
          plot="experiments/dashboard_ap_vs_bits.png", command="python tools/dashboard.py")
"""
import glob
import os

from ..engine.output_dir import EVAL_ONLY_DIR
from .comparisons import ap_delta, parse_bits, records_by_id, run_id, superseded_by
from .plot import plot_ap_vs_bits
from .records import (check_field_types, check_reported_table, markdown_table, read_json, read_yaml,
                      replace_marked_section, signed)

RUN_FILE = "run.json"
REQUIRED = ("config", "command", "git_commit", "seed", "metrics", "status")
README_BEGIN, README_END = "<!-- dashboard:begin -->", "<!-- dashboard:end -->"
MAIN_COLUMNS = ["Dataset", "Task Method", "Quantization method", "Model", "A/W", "Reported", "AP",
                "Δ parent", "Δ control", "Comment", "AP50", "AP75", "Size MB", "GBOPs", "Run", "Command"]
REPORTED_COLUMNS = MAIN_COLUMNS[:7] + ["Comment"]


def _check_provenance(path, run):
    """Raise ValueError naming `path` and every missing provenance field of `run`."""
    check_field_types(path, run)
    try:
        parse_bits((run.get("meta") or {}).get("bits", "32/32"))
    except ValueError as e:
        raise ValueError(f"{path}: field 'meta.bits': {e}") from None
    missing = [k for k in REQUIRED if run.get(k) in (None, "")]
    if run.get("status") not in (None, "", "done"):
        missing.append(f"status=done (is {run['status']!r})")
    if run.get("kind") == "classifier":
        if run.get("metrics") and "val_acc" not in run["metrics"].get("classification", {}):
            missing.append("metrics.classification.val_acc")
    elif run.get("metrics") and "AP" not in run["metrics"].get("bbox", {}):
        missing.append("metrics.bbox.AP")
    if missing:
        raise ValueError(f"{path}: run without provenance, missing {missing}; "
                         f"required fields: {list(REQUIRED)} with status 'done'")


def _dataset(run_dir, run):
    """The run's test dataset(s): meta.dataset, else DATASETS.TEST of its config.yaml."""
    if run["meta"].get("dataset"):
        return run["meta"]["dataset"]
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(cfg_path):
        raise ValueError(f"{cfg_path}: missing (the run's detectron2 config is part of its provenance)")
    config = read_yaml(cfg_path)
    test = config.get("DATASETS", {}).get("TEST", []) if isinstance(config, dict) else None
    if not isinstance(test, (list, tuple)):
        raise ValueError(f"{cfg_path}: field 'DATASETS.TEST' is missing or not a list")
    return ", ".join(map(str, test)) or "?"


def collect_runs(roots, kind="detector"):
    """Return the finished runs of `kind` ("detector" or "classifier") under `roots` (each
    run.json dict + "path" and, for detectors, "dataset").

    Raises ValueError for a missing root or a run.json lacking provenance (REQUIRED fields,
    status "done", metrics.bbox.AP or metrics.classification.val_acc), naming the file and the
    missing fields.
    """
    records = []
    for root in roots:
        if not os.path.isdir(root):
            raise ValueError(f"--roots: {root!r} is not a directory")
        for path in sorted(glob.glob(os.path.join(root, "**", RUN_FILE), recursive=True)):
            run = read_json(path, "a run record (JSON object)")
            _check_provenance(path, run)
            if run.get("kind", "detector") != kind:
                continue
            run = dict(run, path=path, meta=run.get("meta") or {})
            if kind == "detector":
                run["dataset"] = _dataset(os.path.dirname(path), run)
            records.append(run)
    return records


def unfinished_runs(roots):
    """Run directories under `roots` with a checkpoint or config but no run.json (not shown).

    Folders of separate --eval-only runs (`<run>/eval_only/<weights>`) are not runs."""
    found = set()
    for root in roots:
        for marker in ("last_checkpoint", "config.yaml"):
            for path in glob.glob(os.path.join(root, "**", marker), recursive=True):
                run_dir = os.path.dirname(path)
                if EVAL_ONLY_DIR in run_dir.split(os.sep):
                    continue
                if not os.path.exists(os.path.join(run_dir, RUN_FILE)):
                    found.add(run_dir)
    return sorted(found)


def _sort_key(run):
    meta = run["meta"]
    a_bits, w_bits = parse_bits(meta.get("bits", "32/32"))
    return (meta.get("task", ""), meta.get("model", ""), meta.get("variant", ""),
            -a_bits, -w_bits, meta.get("quant", ""), meta.get("scope", ""), run["name"])


def main_rows(records):
    """The main table's rows (MAIN_COLUMNS order), sorted by task, model, variant, bits desc."""
    rows = []
    by_id, newer = records_by_id(records), superseded_by(records)
    for run in sorted(records, key=_sort_key):
        meta, bbox = run["meta"], run["metrics"]["bbox"]
        comment = ", ".join(str(meta[k]) for k in ("variant", "scope", "comment") if meta.get(k))
        if run_id(run) in newer:
            comment = f"**superseded** by {newer[run_id(run)]}; {comment}"
        rows.append([run["dataset"], meta.get("task", "?"), meta.get("quant", "?"),
                     meta.get("model", "?"), meta.get("bits", "?"), "no", f"{bbox['AP']:.1f}",
                     signed(ap_delta(run, by_id, "parent")), signed(ap_delta(run, by_id, "control")),
                     comment, f"{bbox.get('AP50', float('nan')):.1f}",
                     f"{bbox.get('AP75', float('nan')):.1f}", *model_cost(run), run_id(run),
                     f"`{run['command']}`"])
    return rows


def model_cost(run):
    """[size MB, GBOPs] of the model the run's config.yaml builds (quant_det.export.report:
    weights at their trained bits, BOPs = MACs x W bits x A bits per test-size image); ["-", "-"]
    for a config that builds no RetinaNet/FCOS."""
    path = os.path.join(os.path.dirname(run["path"]), "config.yaml")
    arch = ((read_yaml(path) or {}).get("MODEL") or {}).get("META_ARCHITECTURE")
    if arch not in ("RetinaNet", "FCOS"):
        return ["-", "-"]
    from ..export.report import config_cost

    size_mb, gbops = config_cost(path)
    return [f"{size_mb:.2f}", f"{gbops:.1f}"]


def classifier_section(classifiers):
    """Markdown for the recipe's classification backbones (steps 1-3), or "" if there are none."""
    if not classifiers:
        return ""
    rows = []
    for run in sorted(classifiers, key=lambda r: r["path"]):
        cls, meta = run["metrics"]["classification"], run["meta"]
        rows.append([run_id(run), meta.get("quant", "?"), meta.get("bits", "?"),
                     f"{100 * cls['val_acc']:.1f}", f"{100 * cls['train_acc']:.1f}", cls["epochs"],
                     run["git_commit"], f"{run.get('wall_time_s', 0) / 60:.1f}",
                     f"`{run['command']}`"])
    return "\n".join(["## Classification backbones (recipe steps 1-3)", "",
                      "Digit-crop ResNet-18 classifiers, renamed to detectron2 names "
                      "(`detectron2.pth`) for the detectors' MODEL.WEIGHTS.", "",
                      markdown_table(["Run", "Quantization method", "A/W", "val top-1 %", "train top-1 %",
                              "epochs", "git commit", "wall min", "Command"], rows), ""])


def provenance_rows(records):
    """One row per run: name, run.json path, git commit, seed, wall time, resumed."""
    return [[run["name"], f"`{run['path']}`", run["git_commit"], run["seed"],
             f"{run.get('wall_time_s', 0) / 60:.1f}", "yes" if run.get("resumed") else "no"]
            for run in sorted(records, key=_sort_key)]


def load_reported(directory):
    """Every `<directory>/*.yaml` of the original's reported numbers, as parsed dicts."""
    tables = []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        table = read_yaml(path)
        check_reported_table(path, table)
        tables.append(dict(table, path=path))
    return tables


def reported_section(tables):
    """Markdown for the original's numbers, titled as reported and not reproduced here."""
    if not tables:
        return ""
    parts = ["## Reported by the original project (not reproduced here)", ""]
    for t in tables:
        src = t["source"]
        parts += [f"Transcribed in `{t['path']}` from [{src['repo']} `{src['path']}` @ "
                  f"{src['commit'][:10]}]({src.get('url', '')}). These are the original's "
                  "numbers on COCO; no run in this repository produced them.", ""]
        rows = [[r["dataset"], r["task_method"], r["quantization_method"], r["model"], r["a_w"],
                 r["reported"], f"{r['ap']:.1f}", r["comment"]] for r in t["rows"]]
        parts += [markdown_table(REPORTED_COLUMNS, rows), ""]
    return "\n".join(parts)


def render(records, tables, command, machine=None, plot_link=None, unfinished=(), classifiers=()):
    """The whole DASHBOARD.md text."""
    total_s = sum(run.get("wall_time_s", 0) for run in list(records) + list(classifiers))
    parts = ["# Dashboard", "",
             f"Generated from the runs' `run.json` and `config.yaml`; do not edit. Regenerate "
             f"with `{command}`.", "",
             f"- Runs: {len(records)} detectors, {len(classifiers)} classifiers; total wall time {total_s / 3600:.2f} h (sum of "
             "`wall_time_s`; a resumed run counts only its last attempt).",
             f"- Machine: {machine or 'not given (pass --machine)'}",
             "- A/W = activation bits / weight bits. Reported = whether the original reports "
             "this exact row (ours: no).", ""]
    if unfinished:
        parts += ["- Not shown (no run.json yet): " + ", ".join(f"`{d}`" for d in unfinished), ""]
    parts += ["## Our runs", "", markdown_table(MAIN_COLUMNS, main_rows(records)), ""]
    if plot_link:
        parts += [f"![AP vs bit width]({plot_link})", ""]
    parts += ["### Provenance", "",
              markdown_table(["Run", "run.json", "git commit", "seed", "wall min", "resumed"],
                     provenance_rows(records)), ""]
    parts.append(classifier_section(classifiers))
    parts.append(reported_section(tables))
    return "\n".join(parts).rstrip() + "\n"


def replace_readme_section(readme, body):
    """Write `body` between README_BEGIN and README_END in `readme`; touch nothing else."""
    replace_marked_section(readme, README_BEGIN, README_END, body)


def readme_section(records, dashboard_link):
    """The README's dashboard section: the main table and a link to the full dashboard."""
    columns = MAIN_COLUMNS[:-1]
    rows = [row[:-1] for row in main_rows(records)]
    return (f"Generated; full table with commands, provenance and the original's reported "
            f"numbers in [{dashboard_link}]({dashboard_link}).\n\n" + markdown_table(columns, rows))


def build(roots, out, readme=None, plot=None, machine=None, reported_dir="experiments/reported",
          command="python tools/dashboard.py"):
    """Write `out` (and `plot`, and the README section if `readme`); return what was done."""
    if readme and os.path.abspath(readme) == os.path.abspath(out):
        raise ValueError(f"--out {out!r} is the README; refusing to overwrite it whole")
    records = collect_runs(roots)
    classifiers = collect_runs(roots, kind="classifier")
    tables = load_reported(reported_dir) if reported_dir and os.path.isdir(reported_dir) else []
    plot_link = None
    if plot:
        plot_ap_vs_bits(records, plot)
        plot_link = os.path.relpath(plot, os.path.dirname(os.path.abspath(out)) or ".")
    unfinished = unfinished_runs(roots)
    with open(out, "w") as f:
        f.write(render(records, tables, command, machine, plot_link, unfinished, classifiers))
    if readme:
        link = os.path.relpath(out, os.path.dirname(os.path.abspath(readme)))
        replace_readme_section(readme, readme_section(records, link))
    return {"runs": [r["path"] for r in records], "classifiers": [r["path"] for r in classifiers],
            "unfinished": unfinished, "out": out,
            "plot": plot, "readme": readme, "reported": [t["path"] for t in tables]}
