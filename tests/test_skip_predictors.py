"""MODEL.QUANTIZATION.SKIP_PREDICTORS (the original's Quantize-All) and validation of the issue-10 keys."""
import pytest
from detectron2.modeling import build_model
from torch import nn

from quant_det.convert import convert_to_quantization
from quant_det.layers import QuantConv2d, QuantLinear

QUANT = ["MODEL.QUANTIZATION.SCOPE", ["backbone", "head"],
         "MODEL.QUANTIZATION.WEIGHT.METHOD", "lsq", "MODEL.QUANTIZATION.ACT.METHOD", "lsq"]
PREDICTORS = {
    "configs/digits/retinanet_R_18_FPN_FullBN.yaml": {"head.cls_score", "head.bbox_pred"},
    "configs/digits/fcos_R_18_FPN_FullBN.yaml": {"head.cls_score", "head.bbox_pred", "head.ctrness"},
}


@pytest.mark.parametrize("config", sorted(PREDICTORS))
def test_skip_predictors_leaves_exactly_the_predictor_convs_float(cfg_loader, config):
    cfg = cfg_loader(config, *QUANT, "MODEL.QUANTIZATION.SKIP_PREDICTORS", True)
    model = build_model(cfg)
    rows = convert_to_quantization(model, cfg).quantization_table
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    float_layers = {n for n, m in layers.items() if not isinstance(m, (QuantConv2d, QuantLinear))}
    assert float_layers == PREDICTORS[config]
    assert {r[0] for r in rows if r[4] == "SKIP_PREDICTORS"} == PREDICTORS[config]
    assert len(layers) > 30  # backbone + FPN + towers are all quantized


@pytest.mark.parametrize("key,value,expected", [
    ("MODEL.QUANTIZATION.SKIP_PREDICTORS", 1, r"SKIP_PREDICTORS=1.*True or False"),
    ("MODEL.QUANTIZATION.LSQ_INIT", "kl", r"LSQ_INIT='kl'.*paper, mse"),
    ("MODEL.QUANTIZATION.BN_REESTIMATE_ITERS", -5, r"BN_REESTIMATE_ITERS=-5.*int >= 0"),
    ("MODEL.QUANTIZATION.DISTILL.WEIGHT", -1.0, r"DISTILL.WEIGHT=-1.0.*float >= 0"),
    ("MODEL.QUANTIZATION.RANGE_WEIGHT_DECAY", float("nan"), r"RANGE_WEIGHT_DECAY=nan.*float"),
])
def test_new_keys_are_validated(cfg_loader, key, value, expected):
    cfg = cfg_loader("configs/digits/fcos_R_18_FPN.yaml", *QUANT)
    node, leaf = cfg, key.split(".")
    for part in leaf[:-1]:
        node = node[part]
    node[leaf[-1]] = value  # bypass yacs' type coercion, as a python caller could
    with pytest.raises(ValueError, match=expected):
        convert_to_quantization(build_model(cfg), cfg)
