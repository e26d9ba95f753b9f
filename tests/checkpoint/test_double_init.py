"""load_double_init: WEIGHT_EXTRA first, WEIGHTS overrides, each through the checkpointer's checks;
errors name files, keys and shapes."""
import logging
import pickle
import re

import pytest
import torch
from torch import nn

from quant_det.checkpoint import load_double_init


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(1, 2, 1)
        self.head = nn.Linear(2, 3)
        self.register_buffer("pixel_mean", torch.zeros(1))


def save(path, **tensors):
    torch.save({"model": tensors, "iteration": 7}, path)
    return str(path)


def files(tmp_path):
    extra = save(tmp_path / "fp32_detector.pth", **{"backbone.weight": torch.full((2, 1, 1, 1), 1.0),
                 "backbone.bias": torch.full((2,), 1.0), "head.weight": torch.full((3, 2), 1.0),
                 "old_head.weight": torch.zeros(1)})
    weights = save(tmp_path / "lowbit_backbone.pth", **{"backbone.weight": torch.full((2, 1, 1, 1), 2.0),
                   "neck.weight": torch.ones(1)})
    return weights, extra


def test_weights_override_extra_and_report_lists_sources(tmp_path, caplog):
    weights, extra = files(tmp_path)
    model = Tiny()
    head_bias = model.head.bias.detach().clone()
    with caplog.at_level(logging.INFO, logger="quant_det.checkpoint.double_init"):
        report = load_double_init(model, weights, extra)
    assert model.backbone.weight.unique().tolist() == [2.0]  # in both: from WEIGHTS
    assert model.backbone.bias.unique().tolist() == [1.0]  # only in extra
    assert model.head.weight.unique().tolist() == [1.0]
    torch.testing.assert_close(model.head.bias, head_bias)  # in neither: untouched
    assert report.source == {"backbone.weight": weights, "backbone.bias": extra, "head.weight": extra}
    assert report.overridden == ["backbone.weight"]
    assert sorted(report.missing) == ["head.bias", "pixel_mean"]
    assert report.unexpected == {extra: ["old_head.weight"], weights: ["neck.weight"]}
    table = [r.message for r in caplog.records if "Double initialization" in r.message]
    assert len(table) == 1
    assert re.search(r"\| backbone +\| bias +\| WEIGHT_EXTRA +\|", table[0])
    assert re.search(r"\| backbone +\| weight +\| WEIGHTS +\|", table[0])
    assert "missing (neither file)" in table[0]


def test_missing_file_is_an_error_naming_it(tmp_path):
    weights, extra = files(tmp_path)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FileNotFoundError, match="nope_extra.pth"):
        load_double_init(model, weights, str(tmp_path / "nope_extra.pth"))
    with pytest.raises(FileNotFoundError, match="nope_weights.pth"):
        load_double_init(model, str(tmp_path / "nope_weights.pth"), extra)
    for k, v in model.state_dict().items():  # nothing loaded before the error
        torch.testing.assert_close(v, before[k])


def test_shape_mismatch_raises_or_is_dropped(tmp_path):
    weights, extra = files(tmp_path)
    bad = save(tmp_path / "bad.pth", **{"head.weight": torch.zeros(5, 2), "backbone.bias": torch.full((2,), 3.0)})
    with pytest.raises(ValueError, match=r"bad\.pth' does not fit the model: .*head\.weight: file \(5, 2\) vs model \(3, 2\)"):
        load_double_init(Tiny(), bad, extra)
    model = Tiny()
    report = load_double_init(model, bad, extra, drop_mismatch=True)
    assert report.dropped == [(bad, "head.weight", (5, 2), (3, 2))]
    assert report.source["head.weight"] == extra and model.head.weight.unique().tolist() == [1.0]
    assert report.source["backbone.bias"] == bad and model.backbone.bias.unique().tolist() == [3.0]


def test_detectron2_pkl_format_and_weights_optional(tmp_path):
    import numpy as np

    pkl = tmp_path / "extra.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {"head.weight": np.full((3, 2), 4.0, dtype=np.float32)},
                     "__author__": "someone", "matching_heuristics": False}, f)
    model = Tiny()
    report = load_double_init(model, "", str(pkl))
    assert model.head.weight.unique().tolist() == [4.0] and report.source == {"head.weight": str(pkl)}


def test_each_file_gets_the_checks_and_log_of_model_weights(tmp_path, caplog):
    """The same checks and fvcore's key report as a single MODEL.WEIGHTS file, for both files."""
    weights, extra = files(tmp_path)
    lowbit = save(tmp_path / "lowbit.pth", **{"backbone.weight": torch.ones(2, 1, 1, 1),
                  "backbone.weight_quantizer.step": torch.ones(1)})
    with pytest.raises(ValueError, match=r"lowbit\.pth' holds quantizer state that does not match the model"):
        load_double_init(Tiny(), weights, lowbit)  # as WEIGHT_EXTRA
    with pytest.raises(ValueError, match=r"lowbit\.pth' holds quantizer state that does not match the model"):
        load_double_init(Tiny(), lowbit, extra)  # as WEIGHTS
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_double_init(Tiny(), weights, extra)
    unused = [r.getMessage() for r in caplog.records if "not used by the model" in r.getMessage()]
    assert len(unused) == 2 and "old_head" in unused[0] and "neck" in unused[1]
