"""Reading the experiment runner's files (one-line errors naming the file and the field), and the
markdown tables and marked README sections that the dashboard, ablation and benchmark reports write.

A truncated run.json, a run set whose `runs` is a mapping, or a row that is a string used to end
in a traceback that did not name the file; `read_yaml`, `read_json` and `check_field_types`
raise a one-line ValueError instead (tools/run_experiments.py and tools/dashboard.py print it).
"""
import json

import yaml

# Fields of each row of a table of the original's reported numbers (experiments/reported/*.yaml).
REPORTED_FIELDS = ("dataset", "task_method", "quantization_method", "model", "a_w", "reported",
                   "ap", "comment")


def markdown_table(columns, rows):
    """A markdown pipe table; `|` and newlines inside cells are escaped so a cell stays one cell."""
    def cell(value):
        return str(value).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def signed(value):
    """An AP difference as "+1.2" / "-3.4"; "" for None (no reference)."""
    return "" if value is None else f"{value:+.1f}"


def read_yaml(path):
    """yaml.safe_load of `path`; a missing or malformed file is a one-line ValueError naming it."""
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read it: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}: not valid yaml{where}: {problem}") from None


def read_json(path, what="a JSON object"):
    """The dict in `path`; a truncated or malformed file is a one-line ValueError naming it."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read it: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON (truncated?): {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {what}, found a {type(data).__name__}")
    return data


def check_field_types(path, run):
    """Raise ValueError naming `path` and the field if a run.json field has the wrong type
    (metrics, meta: mappings; metrics.bbox.AP, metrics.classification.val_acc: numbers)."""
    for field in ("metrics", "meta"):
        if run.get(field) is not None and not isinstance(run[field], dict):
            raise ValueError(f"{path}: field {field!r} is a {type(run[field]).__name__}, not a mapping")
    for section, metric in (("bbox", "AP"), ("classification", "val_acc")):
        values = (run.get("metrics") or {}).get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{path}: field 'metrics.{section}' is a {type(values).__name__}, not a mapping")
        if metric in values and not isinstance(values[metric], (int, float)):
            raise ValueError(f"{path}: field 'metrics.{section}.{metric}'={values[metric]!r} is not a number")


def check_reported_table(path, table):
    """Raise ValueError naming `path` and the missing fields if `table` (a parsed
    experiments/reported/*.yaml) lacks source.{repo,path,commit} or a row field."""
    if not isinstance(table, dict) or "source" not in table or "rows" not in table:
        raise ValueError(f"{path}: a reported table needs 'source' and 'rows' keys")
    if not isinstance(table["rows"], list) or not all(isinstance(r, dict) for r in table["rows"]):
        raise ValueError(f"{path}: 'rows' must be a list of mappings")
    source = table["source"] if isinstance(table["source"], dict) else {}
    missing = [f"source.{k}" for k in ("repo", "path", "commit") if k not in source]
    missing += [f"rows[{i}].{k}" for i, r in enumerate(table["rows"]) for k in REPORTED_FIELDS if k not in r]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing[:4])}")


def replace_marked_section(path, begin, end, body):
    """Replace the text between the markers `begin` and `end` of the file at `path` with `body`
    (generated README sections: the dashboard, ablation and export tables); nothing else of the
    file changes. A file without both markers in that order is a ValueError naming them, and
    nothing is written."""
    with open(path) as f:
        text = f.read()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path}: needs the markers {begin!r} then {end!r} around the generated section")
    with open(path, "w") as f:
        f.write(text[:i + len(begin)] + "\n" + body.strip() + "\n" + text[j:])
