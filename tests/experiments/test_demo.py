"""make demo's driver: runs the set under its root, prints the table, generates the dashboard."""
import json
from pathlib import Path

import yaml

from quant_det.experiments import demo


def fake_run_set(path, root, log):
    """Leave what the runner leaves for one classifier row and one detector row; return records."""
    records = []
    for name, kind, metrics in [
            ("backbone_low", "classifier", {"classification": {"val_acc": 0.5, "train_acc": 0.75, "epochs": 1}}),
            ("fcos_w2a2", "detector", {"bbox": {"AP": 33.84, "AP50": 60.2, "AP75": 34.5}})]:
        run_dir = Path(root) / name
        run_dir.mkdir(parents=True)
        record = {"name": name, "kind": kind, "config": "c.yaml", "command": f"python x {name}",
                  "git_commit": "abc", "seed": 1, "wall_time_s": 60.0, "status": "done",
                  "metrics": metrics, "meta": {"task": "FCOS", "quant": "LSQ", "bits": "2/2",
                                               "scope": "Quantize-Backbone"}}
        (run_dir / "run.json").write_text(json.dumps(record))
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"DATASETS": {"TEST": ["digits_det_val"]}}))
        records.append(record)
    log(f"ran {path}")
    return records


def test_demo_runs_under_its_root_and_ends_in_the_dashboard(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "register_digits_det", lambda: None)
    monkeypatch.setattr(demo, "run_set", fake_run_set)
    root = tmp_path / "demo"
    demo.main("experiments/demo.yaml", root)
    out = capsys.readouterr().out
    assert "| fcos_w2a2    | LSQ            | 2/2        | Quantize-Backbone | AP 33.8" in out
    assert "top-1 50.0%" in out
    text = (root / "DASHBOARD.md").read_text()
    assert "| digits_det_val | FCOS | LSQ | ? | 2/2 | no | 33.8 |  |  | Quantize-Backbone |" in text
    assert "| demo/backbone_low | LSQ | 2/2 | 50.0 | 75.0 | 1 | abc |" in text
    assert (root / "ap_vs_bits.png").stat().st_size > 0
    assert f"--roots {root} --out {root}/DASHBOARD.md" in text
