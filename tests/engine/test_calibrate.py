"""MODE calibrate: quantizer ranges and BN statistics change, and no gradient is computed."""
import torch
from torch import nn

from conftest import load_cfg
from quant_det.engine.calibrate import calibrate
from quant_det.engine.trainer import Trainer


def test_calibration_changes_ranges_and_bn_stats_without_gradients(tiny_digits, tmp_path):
    cfg = load_cfg("configs/digits/fcos_R_18_FPN.yaml", "OUTPUT_DIR", str(tmp_path),
                   "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0,
                   "MODEL.QUANTIZATION.SCOPE", ["backbone", "head"],
                   "MODEL.QUANTIZATION.MODE", "calibrate",
                   "MODEL.QUANTIZATION.WEIGHT.METHOD", "lsq", "MODEL.QUANTIZATION.ACT.METHOD", "pact")
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    conv = model.head.cls_subnet[3]  # conv, GN, ReLU, conv (input is post-ReLU)
    bn = model.backbone.bottom_up.res3[0].conv1.norm
    step0, alpha0 = conv.weight_quantizer.step.detach().clone(), conv.input_quantizer.alpha.item()
    mean0 = bn.running_mean.clone()
    assert isinstance(bn, nn.BatchNorm2d) and conv.input_quantizer.initialized.item() == 0

    seen = calibrate(model, Trainer.build_train_loader(cfg), num_iters=2)

    assert seen == 2
    assert not torch.equal(conv.weight_quantizer.step.detach(), step0)
    assert conv.input_quantizer.alpha.item() != alpha0
    assert conv.input_quantizer.initialized.item() == 1
    assert not torch.equal(bn.running_mean, mean0)
    assert bn.num_batches_tracked.item() == 2 and bn.momentum == 0.1  # momentum restored
    assert all(p.grad is None for p in model.parameters())
    assert not any(q.calibrating for q in model.modules() if hasattr(q, "calibrating"))
