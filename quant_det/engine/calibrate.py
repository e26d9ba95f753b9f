"""Post-training calibration (MODEL.QUANTIZATION.MODE "calibrate").

Runs CALIB_ITERS training batches forward only (no gradients): every quantizer re-estimates its
range/step/basis (see `set_calibration`), and every BatchNorm's running statistics are re-estimated
from scratch as a cumulative average over those batches (momentum None), as in NNCF's range init
and TI's QuantCalibrateModule. Returns the number of batches used.
"""
import itertools
import logging

import torch
from detectron2.utils.events import EventStorage
from torch import nn

from ..quantizers import set_calibration

logger = logging.getLogger(__name__)


@torch.no_grad()
def calibrate(model: nn.Module, data_loader, num_iters: int) -> int:
    """Calibrate `model` in place on `num_iters` batches of `data_loader`; return batches seen."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration batches
    was_training = model.training
    model.train()
    set_calibration(model, True)
    try:
        # detectron2 detectors log training statistics, which needs an EventStorage.
        with EventStorage(0):
            seen = _run_batches(model, data_loader, num_iters)
    finally:
        set_calibration(model, False)
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return seen


def _run_batches(model, data_loader, num_iters):
    seen = 0
    for batch in itertools.islice(data_loader, num_iters):
        model(batch)
        seen += 1
        if seen % 20 == 0 or seen == num_iters:
            logger.info(f"calibration batch {seen}/{num_iters}")
    return seen
