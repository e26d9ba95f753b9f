"""Post-training calibration (MODEL.QUANTIZATION.MODE "calibrate") and BatchNorm re-estimation
(MODEL.QUANTIZATION.BN_REESTIMATE_ITERS).

Both run training batches forward only (no gradients, weights unchanged), and every BatchNorm's
running statistics are re-estimated from scratch as a cumulative average over those batches
(momentum None), as in NNCF's range init and TI's QuantCalibrateModule. Calibration also lets every
quantizer re-estimate its range/step/basis (see `set_calibration`); BN re-estimation keeps the
quantizers as they are and only measures the statistics the quantized network really produces
(AQD, arXiv 2007.06919, traces much of the low-bit loss to BN statistics that do not match them).
"""
import itertools
import logging

import torch
from detectron2.utils.events import EventStorage
from torch import nn

from ..quantizers import Quantizer, set_calibration

logger = logging.getLogger(__name__)


@torch.no_grad()
def calibrate(model: nn.Module, data_loader, num_iters: int, quantizers: bool = True,
              bn: bool = True) -> int:
    """Re-estimate BN statistics (if `bn`) and the quantizer ranges (if `quantizers`) of `model` in
    place on `num_iters` batches of `data_loader`; return the number of batches seen.

    With bn=False every BatchNorm runs in eval mode (its running statistics normalize and stay as
    they are), so the quantizers see what the model as loaded produces: the sensitivity tool needs
    this, since its float reference must keep the checkpoint's statistics."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [b.momentum for b in bns]
    if bn:
        for b in bns:
            b.reset_running_stats()
            b.momentum = None  # cumulative moving average over the calibration batches
    was_training = model.training
    model.train()
    if not bn:
        for b in bns:
            b.eval()
    if not quantizers:  # frozen: e.g. LQ-Net would otherwise refit its basis in training mode
        for q in model.modules():
            if isinstance(q, Quantizer):
                q.eval()
    set_calibration(model, quantizers)
    try:
        # detectron2 detectors log training statistics, which needs an EventStorage.
        with EventStorage(0):
            seen = _run_batches(model, data_loader, num_iters)
    finally:
        set_calibration(model, False)
        for b, m in zip(bns, momenta):
            b.momentum = m
        model.train(was_training)
    return seen


def reestimate_bn(model: nn.Module, data_loader, num_iters: int) -> int:
    """BN running statistics of the (quantized) `model` re-estimated on `num_iters` batches;
    quantizer ranges unchanged. Returns the number of batches seen."""
    return calibrate(model, data_loader, num_iters, quantizers=False)


def _run_batches(model, data_loader, num_iters):
    seen = 0
    for batch in itertools.islice(data_loader, num_iters):
        model(batch)
        seen += 1
        if seen % 20 == 0 or seen == num_iters:
            logger.info(f"calibration batch {seen}/{num_iters}")
    return seen
