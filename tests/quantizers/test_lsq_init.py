"""MODEL.QUANTIZATION.LSQ_INIT: the first training batch sets the LSQ step by the paper's rule or by MSE."""
import math

import torch

from quant_det.quantizers import build_quantizer
from quant_det.quantizers.lsq import mse_step


def test_paper_and_mse_init_rules():
    x = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    paper = build_quantizer("lsq", "weight", 2)
    paper.train()(x)
    qn, qp = paper.bounds()
    assert torch.allclose(paper.step.data, 2 * x.abs().mean() / math.sqrt(qp))
    mse = build_quantizer("lsq", "weight", 2)
    mse.init_rule = "mse"
    mse.train()(x)
    assert torch.allclose(mse.step.data, mse_step(x, qn, qp))
    # the MSE step really has the smaller quantization error on the batch it was fitted to
    err = [(q.eval()(x) - x).pow(2).sum() for q in (paper, mse)]
    assert err[1] < err[0]
