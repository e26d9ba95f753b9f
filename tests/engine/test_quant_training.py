"""Every quantization METHOD trains RetinaNet and FCOS for a few iterations with finite losses."""
import math

import pytest
import torch

from conftest import load_cfg
from quant_det.engine.trainer import Trainer
from quant_det.layers import QuantConv2d

# (weight method, act method): together they cover every METHOD of both roles.
PAIRS = [("dorefa", "dorefa"), ("lsq", "lsq"), ("lqnet", "lqnet"), ("xnor", "pact"),
         ("ternary", "lsq")]
ARCHS = ["configs/digits/retinanet_R_18_FPN.yaml", "configs/digits/fcos_R_18_FPN.yaml"]


def quant_cfg(config, out_dir, wmethod, amethod, iters=3):
    bits = {"xnor": 1, "ternary": 2}.get(wmethod, 2)
    stem_wbits = 32 if wmethod in ("xnor", "ternary") else 8  # those methods have one bit width
    cfg = load_cfg(config, "OUTPUT_DIR", str(out_dir), "SOLVER.IMS_PER_BATCH", 2,
                   "SOLVER.MAX_ITER", iters, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", (),
                   "DATASETS.TEST", (), "DATALOADER.NUM_WORKERS", 0, "QUANT_DET.LOG_PERIOD", 1,
                   "MODEL.FPN.NORM", "BN", "MODEL.FPN.USE_RELU", True,
                   "MODEL.QUANTIZATION.SCOPE", ["backbone", "head"],
                   "MODEL.QUANTIZATION.WEIGHT.METHOD", wmethod,
                   "MODEL.QUANTIZATION.WEIGHT.BITS", bits,
                   "MODEL.QUANTIZATION.ACT.METHOD", amethod, "MODEL.QUANTIZATION.ACT.BITS", 2,
                   "MODEL.QUANTIZATION.POLICY", [["backbone.bottom_up.stem.conv1", stem_wbits, 32]])
    return cfg


@pytest.mark.parametrize("config", ARCHS)
@pytest.mark.parametrize("wmethod,amethod", PAIRS)
def test_method_trains_with_finite_losses(tiny_digits, tmp_path, config, wmethod, amethod):
    torch.manual_seed(0)
    trainer = Trainer(quant_cfg(config, tmp_path, wmethod, amethod))
    model = trainer._trainer.model
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert convs and convs[-1].weight_quantizer.method == wmethod
    before = convs[-1].weight.detach().clone()
    trainer.train()
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 3 and all(math.isfinite(v) for v, _ in history)
    assert not torch.equal(before, convs[-1].weight.detach()), "weights did not move"
