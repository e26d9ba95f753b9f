"""Dashboard: rows from run files only, runs without provenance refused, README section only."""
import json

import pytest
import yaml

from experiments.run_files import write_run
from quant_det.experiments import dashboard

README = "# Title\n\nIntro.\n\n<!-- dashboard:begin -->\nold table\n<!-- dashboard:end -->\n\n## After\nkeep\n"


@pytest.fixture
def two_runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "fcos_w4a4", {"task": "FCOS", "model": "R-18", "quant": "LSQ", "bits": "4/4",
                                  "variant": "Full-BN", "scope": "Quantize-All"}, 41.26, 70.04, 43.95)
    write_run(root, "fcos_fp32", {"task": "FCOS", "model": "R-18", "quant": "FP32",
                                  "bits": "32/32", "variant": "Full-BN"}, 45.349, 75.0, 48.25)
    return root


def test_main_rows_exact_and_sorted_by_bits_descending(two_runs):
    rows = dashboard.main_rows(dashboard.collect_runs([str(two_runs)]))
    assert rows == [
        ["digits_det_val", "FCOS", "FP32", "R-18", "32/32", "no", "45.3", "", "", "Full-BN", "75.0", "48.2",
         "-", "-", "runs/fcos_fp32", "`python tools/train_net.py --config-file fcos_fp32.yaml`"],
        ["digits_det_val", "FCOS", "LSQ", "R-18", "4/4", "no", "41.3", "", "", "Full-BN, Quantize-All",
         "70.0", "44.0", "-", "-", "runs/fcos_w4a4",
         "`python tools/train_net.py --config-file fcos_w4a4.yaml`"],
    ]


def test_dashboard_file_has_header_tables_and_plot(two_runs, tmp_path):
    reported = tmp_path / "reported"
    reported.mkdir()
    (reported / "orig.yaml").write_text(yaml.safe_dump({
        "source": {"repo": "o/r", "path": "doc/x.md", "commit": "f" * 40, "url": "http://x"},
        "rows": [{"dataset": "COCO", "task_method": "FCOS", "quantization_method": "-",
                  "model": "Torch-18", "a_w": "4/4", "reported": "-", "ap": 35.2,
                  "comment": "1x,FPN-BN, Quantize-All, double-init"}]}))
    out, plot = tmp_path / "DASHBOARD.md", tmp_path / "plots" / "ap.png"
    done = dashboard.build([str(two_runs)], str(out), plot=str(plot), machine="2-core test box",
                           reported_dir=str(reported), command="python tools/dashboard.py --x")
    text = out.read_text()
    assert "Regenerate with `python tools/dashboard.py --x`" in text
    assert "- Machine: 2-core test box" in text
    assert "total wall time 1.00 h" in text  # 2 x 1800 s
    assert ("| digits_det_val | FCOS | LSQ | R-18 | 4/4 | no | 41.3 |  |  | Full-BN, Quantize-All | 70.0 "
            "| 44.0 | - | - | runs/fcos_w4a4 | `python tools/train_net.py --config-file fcos_w4a4.yaml` |") in text
    assert "## Reported by the original project (not reproduced here)" in text
    assert "| COCO | FCOS | - | Torch-18 | 4/4 | - | 35.2 | 1x,FPN-BN, Quantize-All, double-init |" in text
    assert "![AP vs bit width](plots/ap.png)" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000
    assert len(done["runs"]) == 2 and done["unfinished"] == []


@pytest.mark.parametrize("field", ["command", "git_commit", "seed", "config", "metrics"])
def test_run_without_provenance_is_refused(tmp_path, field):
    path = write_run(tmp_path, "bad", {"task": "FCOS"}, 1.0, 2.0, 3.0)
    record = json.loads(path.read_text())
    del record[field]
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{path}.*missing \['{field}'\]"):
        dashboard.collect_runs([str(tmp_path)])


def test_unfinished_status_is_refused(tmp_path):
    path = write_run(tmp_path, "bad", {"task": "FCOS"}, 1.0, 2.0, 3.0, status="running")
    with pytest.raises(ValueError, match=rf"{path}.*status=done \(is 'running'\)"):
        dashboard.collect_runs([str(tmp_path)])


def test_interrupted_run_is_listed_not_shown(two_runs):
    (two_runs / "partial").mkdir()
    (two_runs / "partial" / "last_checkpoint").write_text("model_0000099.pth")
    assert len(dashboard.collect_runs([str(two_runs)])) == 2
    assert dashboard.unfinished_runs([str(two_runs)]) == [str(two_runs / "partial")]


def test_readme_section_replaced_and_nothing_else(two_runs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    dashboard.build([str(two_runs)], str(tmp_path / "DASHBOARD.md"), readme=str(readme),
                    reported_dir=None)
    text = readme.read_text()
    head, rest = text.split("<!-- dashboard:begin -->\n")
    section, tail = rest.split("<!-- dashboard:end -->")
    assert head == "# Title\n\nIntro.\n\n" and tail == "\n\n## After\nkeep\n"
    assert "old table" not in section and "[DASHBOARD.md](DASHBOARD.md)" in section
    assert "| digits_det_val | FCOS | FP32 | R-18 | 32/32 | no | 45.3 |  |  | Full-BN | 75.0 | 48.2 |" in section


def test_readme_without_markers_is_an_error_naming_it(two_runs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match=r"README\.md.*<!-- dashboard:begin -->.*<!-- dashboard:end -->"):
        dashboard.build([str(two_runs)], str(tmp_path / "D.md"), readme=str(readme),
                        reported_dir=None)
    assert readme.read_text() == "# no markers\n"


def test_classifier_runs_get_their_own_table_not_the_ap_table(two_runs, tmp_path):
    run_dir = two_runs / "backbone_low"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "name": "backbone_low", "kind": "classifier", "config": "tools/train_classifier.py",
        "meta": {"quant": "LSQ", "bits": "2/2"}, "command": "python tools/train_classifier.py --out x",
        "git_commit": "beef", "seed": 0, "wall_time_s": 120.0, "status": "done",
        "metrics": {"classification": {"val_acc": 0.9123, "train_acc": 0.95, "epochs": 2}}}))
    assert [r["name"] for r in dashboard.collect_runs([str(two_runs)])] == ["fcos_fp32", "fcos_w4a4"]
    out = tmp_path / "D.md"
    done = dashboard.build([str(two_runs)], str(out), reported_dir=None)
    text = out.read_text()
    assert done["classifiers"] == [str(run_dir / "run.json")]
    assert "| runs/backbone_low | LSQ | 2/2 | 91.2 | 95.0 | 2 | beef | 2.0 |" in text
    assert "- Runs: 2 detectors, 1 classifiers" in text


def test_classifier_run_without_accuracy_is_refused(two_runs):
    run_dir = two_runs / "backbone_bad"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "name": "b", "kind": "classifier", "config": "t", "command": "c", "git_commit": "g",
        "seed": 0, "status": "done", "metrics": {"classification": {"train_acc": 1.0}}}))
    with pytest.raises(ValueError, match=r"backbone_bad/run.json: .*metrics.classification.val_acc"):
        dashboard.collect_runs([str(two_runs)])


def test_differences_to_parent_and_control_and_superseded_rows(tmp_path):
    new, old = tmp_path / "lowbit", tmp_path / "digits"
    fp32 = {"task": "FCOS", "model": "R-18", "quant": "FP32", "bits": "32/32", "variant": "Full-BN"}
    write_run(new, "parent", fp32, 50.0, 70.0, 55.0)
    write_run(new, "ctrl", dict(fp32, comment="control"), 53.25, 72.0, 57.0, init_from="parent")
    write_run(new, "w2a2", {"task": "FCOS", "quant": "LSQ", "bits": "2/2", "control": "ctrl",
                            "variant": "Full-BN", "supersedes": ["digits/w2a2_old"]},
              49.0, 69.0, 52.0, init_from="parent")
    write_run(new, "w2a2_qb", {"task": "FCOS", "quant": "LSQ", "bits": "2/2", "control": "ctrl"},
              51.0, 69.0, 52.0, init_from="clf", extra_from="parent")
    write_run(old, "w2a2_old", {"task": "FCOS", "quant": "LSQ", "bits": "2/2"}, 20.0, 30.0, 10.0)
    records = dashboard.collect_runs([str(new), str(old)])
    rows = {row[14]: row for row in dashboard.main_rows(records)}
    assert rows["lowbit/w2a2"][6:9] == ["49.0", "-1.0", "-4.2"]
    assert rows["lowbit/w2a2_qb"][6:9] == ["51.0", "+1.0", "-2.2"]  # parent = extra_from
    assert rows["lowbit/ctrl"][6:9] == ["53.2", "+3.2", ""]
    assert rows["lowbit/parent"][7:9] == ["", ""]
    assert rows["digits/w2a2_old"][9].startswith("**superseded** by lowbit/w2a2")
