"""Bad inputs to tools/train_net.py stop with an error naming the key/file/value (and the allowed
choices where there are choices), and leave OUTPUT_DIR's existing checkpoints byte-identical.

Every case runs tools/train_net.py's `main` in-process on a 40-image digits-det, with a dummy
model_0000009.pth + last_checkpoint already in OUTPUT_DIR: each error must come before the
OUTPUT_DIR checks (which would refuse that folder without --resume). The two divergence cases
(NaN loss, collapsed LSQ step) train 6 iterations into a fresh folder and check that only good
checkpoints were written. More cases: test_bad_inputs_more.py, test_output_dir.py.
"""
import math
import os
import shutil

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import HookBase

from conftest import REPO, load_cfg, load_train_net
from quant_det.engine.hooks import TrainingDivergedError, TrainingHealthCheck
from quant_det.engine.trainer import Trainer
from reliability.digits_runs import CONFIG, SMALL, make_small_digits

train_net = load_train_net()

RETINANET = os.path.join(REPO, "configs/digits/retinanet_R_18_FPN.yaml")
PACT = ["MODEL.QUANTIZATION.WEIGHT.METHOD", "dorefa", "MODEL.QUANTIZATION.ACT.METHOD", "pact"]
Q = "MODEL.QUANTIZATION."
RES2_ACT = "backbone.bottom_up.res2.0.conv1.input_quantizer"


@pytest.fixture(scope="module")
def data(module_tmp):
    """Data sets (digits-det and three broken COCO sets) and checkpoint files used by the cases."""
    root = module_tmp("bad_inputs")
    make_small_digits(root / "datasets")
    train = root / "datasets" / "digits_det" / "train"
    (root / "invalid.json").write_text("{not json")
    for name, json_file, images in [("rel_missing_json", root / "absent.json", train / "images"),
                                    ("rel_invalid_json", root / "invalid.json", train / "images"),
                                    ("rel_no_images", train / "annotations.json", root / "no_images")]:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(json_file), str(images))
    files = {}
    for name, config, opts in [("lsq", CONFIG, []), ("retinanet", RETINANET, []),
                               ("float", CONFIG, [Q + "SCOPE", "[]"])]:
        model = Trainer.build_model(load_cfg(config, *SMALL, *opts))
        files[name] = str(root / f"{name}.pth")
        torch.save({"model": model.state_dict()}, files[name])
    files["foreign"] = str(root / "foreign.pth")
    torch.save({"model": {"classifier.weight": torch.zeros(3, 3)}}, files["foreign"])
    files["empty"] = str(root / "empty.pth")
    open(files["empty"], "wb").close()
    files["truncated"] = str(root / "truncated.pth")
    with open(files["lsq"], "rb") as src, open(files["truncated"], "wb") as dst:
        dst.write(src.read()[: os.path.getsize(files["lsq"]) // 3])
    return {"root": str(root / "datasets"), **files}


@pytest.fixture
def out_dir(tmp_path, data, monkeypatch):
    """OUTPUT_DIR holding a float checkpoint of iteration 9; returns (path, {file: bytes before})."""
    monkeypatch.setenv("QUANT_DET_DATASETS", data["root"])
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(data["float"], out / "model_0000009.pth")
    (out / "last_checkpoint").write_text("model_0000009.pth")
    return out, {n: (out / n).read_bytes() for n in ("model_0000009.pth", "last_checkpoint")}


def args_for(out, *opts, resume=False, config=CONFIG):
    argv = ["--config-file", config] + (["--resume"] if resume else []) + [
        "OUTPUT_DIR", str(out), *SMALL, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "4",
        *map(str, opts)]
    return train_net.argument_parser().parse_args(argv)


def assert_untouched(out, before):
    for name, content in before.items():
        assert (out / name).read_bytes() == content, f"{name} changed"
    assert sorted(os.listdir(out)) == sorted(before)  # not even log.txt or config.yaml written


# (id, overrides (with {file} placeholders), --resume, exception type, substrings of the message)
CASES = [
    ("unknown key", [Q + "WEIGHT.METHD", "lsq"], False, KeyError,
     [Q + "WEIGHT.METHD", "did you mean " + Q + "WEIGHT.METHOD"]),
    ("weight method typo", [Q + "WEIGHT.METHOD", "lsqq"], False, ValueError,
     [Q + "WEIGHT.METHOD", "'lsqq'", "none, dorefa, lsq, lqnet, xnor, ternary"]),
    ("act method typo", [Q + "ACT.METHOD", "PACT"], False, ValueError,
     [Q + "ACT.METHOD", "'PACT'", "none, dorefa, pact, lsq, lqnet"]),
    ("bits out of range", [Q + "WEIGHT.BITS", 9], False, ValueError,
     [Q + "WEIGHT.BITS=9", "1..8"]),
    ("levels inconsistent with bits", [Q + "ACT.LEVELS", 32], False, ValueError,
     [Q + "ACT.LEVELS=32", "BITS=4", "2..16"]),
    ("mode typo", [Q + "MODE", "train"], False, ValueError,
     [Q + "MODE", "'train'", "qat, calibrate, eval"]),
    ("scope names no module", [Q + "SCOPE", "['backbone', 'neck']"], False, KeyError,
     [Q + "SCOPE[1]='neck'", "backbone, head"]),
    ("malformed policy", [Q + "POLICY", "[['head.cls_score', 4]]"], False, ValueError,
     [Q + "POLICY[0]", "[regex, weight_bits, act_bits]"]),
    ("policy bits", [Q + "POLICY", "[['head.cls_score', 4, 12]]"], False, ValueError,
     [Q + "POLICY[0] act_bits=12", "1..8 or 32"]),
    ("weight extra missing", ["MODEL.WEIGHT_EXTRA", "{root}/absent_fp32.pth"], False,
     FileNotFoundError, ["absent_fp32.pth"]),
    ("retinanet weights into fcos", ["MODEL.WEIGHTS", "{retinanet}"], False, ValueError,
     ["retinanet.pth", "head.cls_score.weight: file (90, 64, 3, 3) vs model (10, 64, 3, 3)",
      "WEIGHT_EXTRA_DROP_MISMATCH"]),
    ("lsq checkpoint into dorefa/pact model", ["MODEL.WEIGHTS", "{lsq}", *PACT], False, ValueError,
     ["lsq.pth", "another quantization config (MODEL.QUANTIZATION)",
      "file lsq act 4-bit 16-level sign from data per-tensor vs config pact act 4-bit 16-level "
      f"unsigned per-tensor: {RES2_ACT}", Q + "REINIT_MISMATCHED True"]),
    ("foreign checkpoint", ["MODEL.WEIGHTS", "{foreign}"], False, ValueError,
     ["foreign.pth", "shares no key", "classifier.weight"]),
    ("empty checkpoint", ["MODEL.WEIGHTS", "{empty}"], False, ValueError, ["empty.pth", "empty"]),
    ("truncated checkpoint", ["MODEL.WEIGHTS", "{truncated}"], False, ValueError,
     ["truncated.pth", "truncated"]),
    ("resume a quantized run from a float checkpoint", [], True, ValueError,
     ["model_0000009.pth", "cannot resume", f"missing {RES2_ACT}.initialized"]),
    ("annotation json missing", ["DATASETS.TRAIN", "('rel_missing_json',)"], False, ValueError,
     ["rel_missing_json", "absent.json"]),
    ("annotation json invalid", ["DATASETS.TRAIN", "('rel_invalid_json',)"], False, ValueError,
     ["rel_invalid_json", "invalid.json", "JSONDecodeError"]),
    ("images missing", ["DATASETS.TRAIN", "('rel_no_images',)"], False, FileNotFoundError,
     ["rel_no_images", "40 of 40 images are missing", "no_images/000001.png"]),
    ("num classes mismatch", ["MODEL.FCOS.NUM_CLASSES", 80], False, ValueError,
     ["MODEL.FCOS.NUM_CLASSES=80", "'digits_det_train' has 10 classes",
      "set MODEL.FCOS.NUM_CLASSES 10"]),
]


@pytest.mark.parametrize("opts,resume,error,parts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_culprit_and_keeps_checkpoints(data, out_dir, opts, resume, error, parts):
    out, before = out_dir
    opts = [o.format(**data) if isinstance(o, str) else o for o in opts]
    with pytest.raises(error) as info:
        train_net.main(args_for(out, *opts, resume=resume))
    message = str(info.value.args[0]) if error is KeyError else str(info.value)
    for part in parts:
        assert part.format(**data) in message, message
    assert_untouched(out, before)


class Inject(HookBase):
    """Test-only fault: call `fault(model)` after iteration `at`."""

    def __init__(self, at, fault):
        self.at, self.fault = at, fault

    def after_step(self):
        if self.trainer.iter == self.at:
            with torch.no_grad():
                self.fault(self.trainer.model)


def train_with_fault(out, fault, before_health_check):
    cfg, spec = train_net.setup(args_for(out, "SOLVER.MAX_ITER", 8))
    trainer = Trainer(cfg, spec)
    hook = Inject(4, fault)
    trainer.register_hooks([hook])
    if before_health_check:  # corrupt after the optimizer step, before the check and checkpointer
        trainer._hooks.remove(hook)
        at = next(i for i, h in enumerate(trainer._hooks) if isinstance(h, TrainingHealthCheck))
        trainer._hooks.insert(at, hook)
    trainer.resume_or_load(resume=False)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.train()
    return str(info.value)


def assert_only_good_checkpoints(out):
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    checkpoints = sorted(n for n in os.listdir(out) if n.endswith(".pth"))
    assert checkpoints == ["model_0000003.pth"]
    state = torch.load(out / "model_0000003.pth", weights_only=False)["model"]
    assert all(bool(torch.isfinite(v.float()).all()) for v in state.values())


@pytest.fixture
def fresh_out_dir(out_dir):
    """An OUTPUT_DIR next to `out_dir` that holds no run (training into `out_dir` is refused)."""
    return out_dir[0].parent / "fresh"


def test_nan_loss_stops_with_iteration_and_loss_terms(fresh_out_dir):
    out = fresh_out_dir
    message = train_with_fault(out, lambda m: m.head.cls_score.bias.fill_(math.nan), False)
    assert "iteration=5" in message and "loss_fcos_cls" in message and "loss_fcos_loc" in message
    assert str(out / "model_0000003.pth") in message
    assert_only_good_checkpoints(out)


def test_collapsed_lsq_step_stops_naming_the_quantizer(fresh_out_dir):
    out = fresh_out_dir
    message = train_with_fault(
        out, lambda m: m.head.cls_subnet[0].weight_quantizer.step.fill_(-0.01), True)
    assert "iteration 4" in message and "head.cls_subnet.0.weight_quantizer (min -0.01)" in message
    assert str(out / "model_0000003.pth") in message
    assert_only_good_checkpoints(out)
