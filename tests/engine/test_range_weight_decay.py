"""MODEL.QUANTIZATION.RANGE_WEIGHT_DECAY: the quantizers' learned ranges get their own weight decay."""
import pytest
from detectron2.modeling import build_model

from quant_det.convert import convert_to_quantization
from quant_det.engine.trainer import Trainer

QUANT = ["MODEL.QUANTIZATION.SCOPE", ["backbone", "head"], "MODEL.QUANTIZATION.WEIGHT.METHOD", "lsq",
         "MODEL.QUANTIZATION.ACT.METHOD", "pact", "SOLVER.WEIGHT_DECAY", 1e-4,
         "SOLVER.WEIGHT_DECAY_NORM", 0.0]


def _decay_of(optimizer):
    return {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("decay,expected", [(-1.0, 1e-4), (0.0, 0.0), (5e-5, 5e-5)])
def test_range_parameters_get_their_decay_and_nothing_else_changes(cfg_loader, decay, expected):
    cfg = cfg_loader("configs/digits/retinanet_R_18_FPN_FullBN.yaml", *QUANT,
                     "MODEL.QUANTIZATION.RANGE_WEIGHT_DECAY", decay)
    model = build_model(cfg)
    convert_to_quantization(model, cfg)
    decays = _decay_of(Trainer.build_optimizer(cfg, model))
    ranges = [m.weight_quantizer.step for m in model.modules() if hasattr(m, "weight_quantizer")]
    ranges += [m.input_quantizer.alpha for m in model.modules() if hasattr(m, "input_quantizer")]
    assert len(ranges) > 70 and {decays[id(p)] for p in ranges} == {expected}
    assert decays[id(model.head.cls_score.weight)] == 1e-4
    assert decays[id(model.backbone.bottom_up.stem.conv1.norm.weight)] == 0.0
    assert len(decays) == sum(1 for p in model.parameters() if p.requires_grad)
