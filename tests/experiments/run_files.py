"""A finished run directory as quant_det.experiments.runner leaves it, for the dashboard's tests."""
import json

import yaml


def write_run(root, name, meta, ap, ap50, ap75, **overrides):
    """Write `root/name/run.json` (+ detectron2's config.yaml) and return the run.json path."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    record = {"name": name, "config": f"configs/digits/{name}.yaml", "opts": [], "init_from": None,
              "meta": meta, "command": f"python tools/train_net.py --config-file {name}.yaml",
              "git_commit": "0123abc", "seed": 7, "wall_time_s": 1800.0, "status": "done",
              "metrics": {"bbox": {"AP": ap, "AP50": ap50, "AP75": ap75, "APs": 1.0}},
              "resumed": False}
    record.update(overrides)
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"DATASETS": {"TEST": ["digits_det_val"]},
                                                         "SEED": 7}))
    return run_dir / "run.json"
