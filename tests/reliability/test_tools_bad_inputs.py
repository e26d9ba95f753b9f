"""Bad inputs to the other tools give a one-line error naming the file, field or option, and
leave every file that was there byte-identical: tools/rename_checkpoint.py (an output folder that
does not exist, a text file as input), tools/run_experiments.py and tools/dashboard.py (a
malformed run-set yaml, a truncated or malformed run.json) and tools/make_digits_det.py (--seed -1).
"""
import importlib.util
import json
import os
import sys

import pytest
import torch

from conftest import REPO
from quant_det.experiments import dashboard, runner
from reliability.digits_runs import md5s


def tool(name):
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_rename_into_a_missing_folder_names_the_folder_not_a_temp_file(tmp_path, capsys):
    src = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1)}, src)
    before = md5s(tmp_path)
    dst = tmp_path / "missing" / "out.pth"
    assert tool("rename_checkpoint").main([str(src), str(dst), "--rules", "torchvision-resnet"]) == 1
    err = one_line_error(capsys)
    assert f"its directory '{tmp_path / 'missing'}' does not exist" in err and ".tmp" not in err
    assert md5s(tmp_path) == before


def test_rename_of_a_text_file_says_it_is_no_checkpoint_without_suggesting_unsafe_pickle(tmp_path, capsys):
    src = tmp_path / "notes.pth"
    src.write_text("these are my notes, not a checkpoint\n")
    before = md5s(tmp_path)
    assert tool("rename_checkpoint").main([str(src), str(tmp_path / "out.pth"), "--rules",
                                           "torchvision-resnet"]) == 1
    err = one_line_error(capsys)
    assert f"cannot read '{src}': not a checkpoint" in err and "b'thes'" in err
    assert "--unsafe-pickle" not in err
    assert md5s(tmp_path) == before


RUN_SETS = [
    ("runs is a mapping", "root: r\nruns:\n  fcos: {config: c.yaml}\n",
     "'runs' is a dict, not a list of rows"),
    ("a row is a string", "root: r\nruns:\n  - fcos_fp32\n",
     "runs[0] is a str ('fcos_fp32'), not a mapping"),
    ("truncated yaml", "root: r\nruns:\n  - name: a\n    config: [configs/x.yaml\n",
     "not valid yaml (line 5, column 1)"),
    ("opts not a list", "root: r\nruns:\n  - {name: a, config: c.yaml, opts: SOLVER.MAX_ITER}\n",
     "runs[0].opts='SOLVER.MAX_ITER' is not a list"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in RUN_SETS], ids=[c[0] for c in RUN_SETS])
def test_malformed_run_set_is_a_one_line_error_naming_file_and_field(tmp_path, capsys, text, message):
    path = tmp_path / "set.yaml"
    path.write_text(text)
    before = md5s(tmp_path)
    assert tool("run_experiments").main([str(path)]) == 1
    assert one_line_error(capsys).startswith(f"error: {path}: {message}")
    assert md5s(tmp_path) == before


def test_truncated_run_json_of_a_row_is_an_error_naming_it(tmp_path):
    row = tmp_path / "runs" / "fcos"
    row.mkdir(parents=True)
    (row / "run.json").write_text('{"name": "fcos", "status": "do')
    before = md5s(tmp_path)
    with pytest.raises(ValueError) as info:
        runner.execute({"name": "fcos", "config": "c.yaml"}, str(tmp_path / "runs"), log=lambda m: None)
    assert str(info.value).startswith(f"{row / 'run.json'}: not valid JSON (truncated?)")
    assert len(str(info.value).splitlines()) == 1
    assert md5s(tmp_path) == before


RUN_JSONS = [
    ("truncated", '{"name": "a", "metr', "not valid JSON (truncated?)"),
    ("a list", '[{"name": "a"}]', "expected a run record (JSON object), found a list"),
    ("metrics not a mapping", json.dumps({"name": "a", "metrics": [1.0]}),
     "field 'metrics' is a list, not a mapping"),
    ("AP not a number", json.dumps({"name": "a", "metrics": {"bbox": {"AP": "high"}}}),
     "field 'metrics.bbox.AP'='high' is not a number"),
    ("bad bits", json.dumps({"name": "a", "meta": {"bits": "four"}}), "field 'meta.bits': bits 'four'"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in RUN_JSONS], ids=[c[0] for c in RUN_JSONS])
def test_dashboard_malformed_run_json_is_a_one_line_error_naming_file_and_field(tmp_path, capsys, text, message):
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(text)
    before = md5s(tmp_path)
    argv = ["--roots", str(tmp_path / "runs"), "--out", str(tmp_path / "D.md"), "--readme", "",
            "--plot", "", "--reported", ""]
    assert tool("dashboard").main(argv) == 1
    assert one_line_error(capsys).startswith(f"error: {run_dir / 'run.json'}: {message}")
    assert md5s(tmp_path) == before


def test_dashboard_malformed_reported_table_names_file_and_field(tmp_path):
    (tmp_path / "table.yaml").write_text("source: {repo: x, path: y, commit: z}\nrows:\n  - {dataset: COCO}\n")
    with pytest.raises(ValueError, match=r"table\.yaml: missing field\(s\) rows\[0\]\.task_method"):
        dashboard.load_reported(str(tmp_path))


def test_make_digits_det_negative_seed_names_the_option(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["make_digits_det.py", "--seed", "-1", "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit) as info:
        tool("make_digits_det").main()
    assert info.value.code == 2
    assert "argument --seed: -1 is not allowed: an int >= 0" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
