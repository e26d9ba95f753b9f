"""More bad inputs to tools/train_net.py: typos in POLICY/SKIP, invalid annotations, solver keys
that would fail after training started, MODEL.WEIGHTS naming a directory. Each stops before
OUTPUT_DIR is touched with an error naming the key/file/value, and every file that was there
(a finished-looking run: checkpoint, last_checkpoint, metrics.json, log.txt, config.yaml) is
byte-identical afterwards. Same set-up as test_bad_inputs.py, run in-process.
"""
import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from conftest import load_train_net
from reliability.digits_runs import make_small_digits, md5s, run_args

train_net = load_train_net()

Q = "MODEL.QUANTIZATION."
STEM = "backbone.bottom_up.stem.conv1"


def broken_copy(train, path, annotation_id, **changes):
    """digits-det train annotations with annotation `annotation_id` changed; returns the path."""
    coco = json.loads((train / "annotations.json").read_text())
    ann = next(a for a in coco["annotations"] if a["id"] == annotation_id)
    ann.update(changes)
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture(scope="module")
def data(module_tmp):
    root = module_tmp("bad_inputs_more")
    make_small_digits(root / "datasets")
    train = root / "datasets" / "digits_det" / "train"
    sets = {"rel_negative_bbox": broken_copy(train, root / "negative.json", 7, bbox=[30, 40, -12, 20]),
            "rel_unknown_category": broken_copy(train, root / "category.json", 5, category_id=11)}
    for name, json_file in sets.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(json_file), str(train / "images"))
    return {"root": str(root / "datasets"), "run": str(root / "run")}


@pytest.fixture
def out_dir(tmp_path, data, monkeypatch):
    """OUTPUT_DIR holding a (dummy) run; returns (path, md5 of its files)."""
    monkeypatch.setenv("QUANT_DET_DATASETS", data["root"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_0000009.pth").write_bytes(b"a checkpoint")
    (out / "last_checkpoint").write_text("model_0000009.pth")
    (out / "metrics.json").write_text('{"iteration": 9, "total_loss": 1.0}\n')
    (out / "log.txt").write_text("[12/01 10:00:00 d2.engine] Starting training\n")
    (out / "config.yaml").write_text("SEED: 3\n")
    return out, md5s(out)


# (id, overrides, --resume, exception type, substrings of the message); "{out}" is OUTPUT_DIR.
CASES = [
    ("policy typo", [Q + "POLICY", "[['backbone.bottom_up.stem.conv', 8, 8]]"], True, KeyError,
     [Q + "POLICY[0]='backbone.bottom_up.stem.conv' matches no Conv2d/Linear layer in SCOPE "
      "['backbone', 'head']", f"nearest layer names: {STEM}"]),
    ("skip typo", [Q + "SKIP", "['head.cls_scor']"], True, KeyError,
     [Q + "SKIP[0]='head.cls_scor' matches no Conv2d/Linear layer", "nearest layer names: head.cls_score"]),
    ("bbox with negative width", ["DATASETS.TRAIN", "('rel_negative_bbox',)"], True, ValueError,
     ["DATASETS.TRAIN 'rel_negative_bbox'", "negative.json", "annotation id 7: bbox [30, 40, -12, 20] "
      "has a negative width"]),
    ("category id outside the categories", ["DATASETS.TRAIN", "('rel_unknown_category',)"], True,
     ValueError, ["DATASETS.TRAIN 'rel_unknown_category'", "category.json",
                  "annotation id 5: category_id 11 is not one of the 'categories' ids"]),
    ("unregistered data set", ["DATASETS.TEST", "('digits_det_vall',)"], True, KeyError,
     ["DATASETS.TEST: 'digits_det_vall' is not a registered data set", "did you mean digits_det_val"]),
    ("batch size 0", ["SOLVER.IMS_PER_BATCH", 0], True, ValueError,
     ["SOLVER.IMS_PER_BATCH=0 is invalid: allowed an int >= 1"]),
    ("checkpoint period 0", ["SOLVER.CHECKPOINT_PERIOD", 0], True, ValueError,
     ["SOLVER.CHECKPOINT_PERIOD=0 is invalid: allowed an int >= 1"]),
    ("log period 0", ["QUANT_DET.LOG_PERIOD", 0], True, ValueError,
     ["QUANT_DET.LOG_PERIOD=0 is invalid: allowed an int >= 1"]),
    ("weights is a directory", ["MODEL.WEIGHTS", "{out}"], False, ValueError,
     ["MODEL.WEIGHTS '{out}' is a directory, not a checkpoint file",
      "its last checkpoint is '{out}/model_0000009.pth'"]),
    ("weight extra is a directory", ["MODEL.WEIGHT_EXTRA", "{out}"], False, ValueError,
     ["MODEL.WEIGHT_EXTRA '{out}' is a directory"]),
]


@pytest.mark.parametrize("opts,resume,error,parts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_culprit_and_leaves_every_file(out_dir, opts, resume, error, parts):
    out, before = out_dir
    opts = [o.format(out=out) if isinstance(o, str) else o for o in opts]
    with pytest.raises(error) as info:
        train_net.main(run_args(out, *opts, "SOLVER.MAX_ITER", 6, flags=["--resume"] if resume else []))
    message = str(info.value.args[0]) if error is KeyError else str(info.value)
    for part in parts:
        assert part.format(out=out) in message, message
    assert md5s(out) == before


def test_overwrite_with_resume_is_refused(out_dir):
    out, before = out_dir
    with pytest.raises(ValueError, match="--overwrite cannot go with --resume"):
        train_net.main(run_args(out, flags=["--resume", "--overwrite"]))
    assert md5s(out) == before


def test_annotation_check_runs_before_a_run_is_cleared(out_dir):
    """--overwrite deletes the previous run only once the new one's inputs are valid."""
    out, before = out_dir
    with pytest.raises(ValueError, match="negative width"):
        train_net.main(run_args(out, "DATASETS.TRAIN", "('rel_negative_bbox',)", flags=["--overwrite"]))
    assert md5s(out) == before
