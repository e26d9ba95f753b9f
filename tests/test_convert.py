"""convert_to_quantization on RetinaNet-R18 and FCOS-R18: coverage, SKIP/POLICY, checkpoints, errors."""
import re

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from quant_det.convert import QuantizationSpec, convert_to_quantization
from quant_det.layers import QuantConv2d, QuantLinear

CONFIGS = ["configs/digits/retinanet_R_18_FPN.yaml", "configs/digits/fcos_R_18_FPN.yaml"]
QUANT = ["MODEL.QUANTIZATION.SCOPE", ["backbone", "head"],
         "MODEL.QUANTIZATION.WEIGHT.METHOD", "lsq", "MODEL.QUANTIZATION.ACT.METHOD", "lsq"]


@pytest.mark.parametrize("config", CONFIGS)
def test_everything_in_scope_is_swapped_except_skip(cfg_loader, config):
    cfg = cfg_loader(config, *QUANT, "MODEL.QUANTIZATION.SKIP", ["head.cls_score"],
                     "MODEL.QUANTIZATION.POLICY", [["backbone.bottom_up.stem.conv1", 8, 32]])
    model = build_model(cfg)
    rows = convert_to_quantization(model, cfg).quantization_table
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            quantized = isinstance(m, (QuantConv2d, QuantLinear))
            in_scope = name.split(".")[0] in ("backbone", "head")
            assert quantized == (in_scope and name != "head.cls_score"), name
    stem = model.backbone.bottom_up.stem.conv1
    assert (stem.weight_quantizer.bits, stem.input_quantizer.method) == (8, "none")
    assert any(r[0] == "head.cls_score" and "SKIP" in r[4] for r in rows)
    # detectron2's plain nn.Conv2d predictor convs are swapped too
    assert isinstance(model.head.bbox_pred, QuantConv2d)


@pytest.mark.parametrize("config", CONFIGS)
def test_float_checkpoint_loads_with_only_quantizer_keys_missing(cfg_loader, config):
    cfg = cfg_loader(config, *QUANT)
    torch.manual_seed(0)
    float_model = build_model(cfg)
    qmodel = build_model(cfg)
    convert_to_quantization(qmodel, cfg)
    result = qmodel.load_state_dict(float_model.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys, "lsq quantizers have parameters"
    assert all(re.search(r"\.(weight|input)_quantizer\.", k) for k in result.missing_keys)


def test_default_config_leaves_model_float(cfg_loader):
    cfg = cfg_loader(CONFIGS[0])
    model = build_model(cfg)
    assert convert_to_quantization(model, cfg) is model and model.quantization_table == []
    assert not any(isinstance(m, QuantConv2d) for m in model.modules())


@pytest.mark.parametrize("key,value,expected", [
    ("MODEL.QUANTIZATION.WEIGHT.METHOD", "dorefaa", r"WEIGHT.METHOD='dorefaa'.*lsq"),
    ("MODEL.QUANTIZATION.ACT.METHOD", "xnor", r"ACT.METHOD='xnor'.*pact"),
    ("MODEL.QUANTIZATION.WEIGHT.BITS", 0, r"WEIGHT.BITS=0.*1..8"),
    ("MODEL.QUANTIZATION.ACT.BITS", 9, r"ACT.BITS=9.*1..8"),
    ("MODEL.QUANTIZATION.WEIGHT.LEVELS", 5, r"WEIGHT.LEVELS=5.*BITS=2"),
    ("MODEL.QUANTIZATION.POLICY", [["stem", 4]], r"POLICY\[0\].*malformed"),
    ("MODEL.QUANTIZATION.POLICY", [["(", 4, 4]], r"POLICY\[0\].*regex"),
    ("MODEL.QUANTIZATION.POLICY", [["stem", 4, 12]], r"POLICY\[0\] act_bits=12"),
    ("MODEL.QUANTIZATION.MODE", "train", r"MODE='train'.*calibrate"),
    ("MODEL.QUANTIZATION.POLICY", [["stem", 8, 8]], None),  # fine for lsq ...
])
def test_bad_values_name_key_value_and_choices(cfg_loader, key, value, expected):
    opts = [*QUANT, "MODEL.QUANTIZATION.WEIGHT.BITS", 2, key, value]
    cfg = cfg_loader(None, *opts)
    if expected is None:
        QuantizationSpec.from_config(cfg)
        cfg.MODEL.QUANTIZATION.WEIGHT.METHOD = "xnor"  # ... but xnor has only 1 bit
        expected = r"WEIGHT \(METHOD 'xnor', BITS 2\).*allowed: \[1\]"
    with pytest.raises(ValueError, match=expected):
        QuantizationSpec.from_config(cfg)


def test_unknown_scope_path_lists_top_level_modules(cfg_loader):
    cfg = cfg_loader(CONFIGS[0], *QUANT)
    cfg.MODEL.QUANTIZATION.SCOPE = ["backbone", "heads"]
    with pytest.raises(KeyError, match=r"SCOPE\[1\]='heads'.*backbone.*head"):
        convert_to_quantization(build_model(cfg), cfg)


def test_fpn_convs_used_through_lists_are_the_quantized_ones(cfg_loader):
    cfg = cfg_loader(CONFIGS[1], *QUANT)
    model = build_model(cfg)
    convert_to_quantization(model, cfg)
    fpn = model.backbone
    used = [*fpn.lateral_convs, *fpn.output_convs]
    registered = {id(m) for n, m in fpn.named_children() if n.startswith("fpn_")}
    assert len(used) == 6 and all(isinstance(c, QuantConv2d) for c in used)
    assert {id(c) for c in used} == registered  # forward calls the swapped modules


def test_public_entry_point_returns_the_model_with_its_table(cfg_loader):
    from quant_det import convert_to_quantization as public
    cfg = cfg_loader(CONFIGS[1], *QUANT)
    model = build_model(cfg)
    assert public(model, cfg) is model
    table = {row[0]: row for row in model.quantization_table}
    assert isinstance(model.head.cls_score, QuantConv2d)
    assert table["head.cls_score"][1:4] == ("Conv2d", "lsq/4b", "lsq/4b")
    assert table["backbone.bottom_up.stem.conv1"][2] == "lsq/4b"
