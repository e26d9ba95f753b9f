"""The generated ablation table: each quantized row against its control and its parent."""
import json

import pytest
import yaml

from quant_det.experiments.ablation import ablation_rows, replace_section
from quant_det.experiments.comparisons import trained_iterations


def _row(root, name, ap, meta=None, opts=(), init_from=None, max_iter=500, mode="qat"):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    record = {"name": name, "config": "c.yaml", "opts": list(opts), "init_from": init_from,
              "meta": meta or {}, "command": "python tools/train_net.py", "git_commit": "abc",
              "seed": 1, "status": "done", "metrics": {"bbox": {"AP": ap}}}
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "DATASETS": {"TEST": ["digits_det_val"]}, "SOLVER": {"MAX_ITER": max_iter},
        "MODEL": {"QUANTIZATION": {"MODE": mode}}}))


@pytest.fixture
def run_set(tmp_path):
    root = tmp_path / "lowbit"
    _row(root, "parent", 50.0, max_iter=1500)
    _row(root, "ctrl", 52.0, init_from="parent")
    meta = {"control": "ctrl", "task": "FCOS", "variant": "Full-BN", "bits": "2/2",
            "comment": "ablation: no distillation"}
    _row(root, "w2a2", 47.5, meta, init_from="parent")
    _row(root, "ptq", 49.0, dict(meta, control="parent", bits="8/8", comment="calibrated"),
         init_from="parent", mode="calibrate")
    _row(root, "bnre", 48.0, dict(meta, parent="parent"), init_from="w2a2",
         opts=["MODEL.QUANTIZATION.MODE", "eval"])
    _row(root, "retina", 40.0, dict(meta, task="RetinaNet"), init_from="parent")
    names = ["parent", "ctrl", "retina", "ptq", "w2a2", "bnre", "not_run"]
    path = tmp_path / "set.yaml"
    path.write_text(yaml.safe_dump({"root": str(root), "runs": [{"name": n} for n in names]}))
    return path


def test_rows_grouped_by_task_give_both_differences(run_set):
    rows = {r[0]: r for r in ablation_rows(str(run_set))}
    # parents, controls and unfinished rows left out; grouped by task, file order within
    assert list(rows) == ["`ptq`", "`w2a2`", "`bnre`", "`retina`"]
    assert rows["`w2a2`"][4:] == ("no distillation", 500, "47.5", "−4.5", "−2.5")
    # PTQ: its control is its parent, so only the parent difference is shown; it trained 0 iterations
    assert rows["`ptq`"][5:] == (0, "49.0", "", "−1.0")
    # meta.parent overrides init_from (BN re-estimation evaluates the QAT row, parent is the FP32)
    assert rows["`bnre`"][5:] == (0, "48.0", "−4.0", "−2.0")


def test_iterations_of_an_eval_row_from_its_opts(run_set, tmp_path):
    run = json.loads((tmp_path / "lowbit" / "bnre" / "run.json").read_text())
    run["path"] = str(tmp_path / "lowbit" / "bnre" / "run.json")
    assert trained_iterations(run) == 0
    run["opts"] = []
    assert trained_iterations(run) == 500


def test_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: 3\n")
    with pytest.raises(ValueError, match="bad.yaml.*'runs' list"):
        ablation_rows(str(bad))
    bad.write_text(yaml.safe_dump({"root": str(tmp_path / "missing"), "runs": []}))
    with pytest.raises(ValueError, match="missing"):
        ablation_rows(str(bad))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n")
    with pytest.raises(ValueError, match="ablation:lowbit:begin"):
        replace_section(str(readme), "lowbit", "| t |")
    assert readme.read_text() == "intro\n"  # nothing written on error


def test_replace_section_touches_only_the_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- ablation:x:begin -->\nold\n<!-- ablation:x:end -->\nb\n")
    replace_section(str(readme), "x", "| new |")
    assert readme.read_text() == "a\n<!-- ablation:x:begin -->\n| new |\n<!-- ablation:x:end -->\nb\n"
