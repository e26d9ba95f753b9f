"""MODEL.QUANTIZATION.BN_REESTIMATE_ITERS: BN statistics of the quantized network, quantizers frozen."""
import torch
from torch import nn

from quant_det.engine.calibrate import reestimate_bn
from quant_det.layers import QuantConv2d
from quant_det.quantizers import build_quantizer


def _net():
    torch.manual_seed(0)
    conv = QuantConv2d.from_float(nn.Conv2d(3, 8, 3, padding=1), build_quantizer("lqnet", "weight", 2),
                                  build_quantizer("lsq", "act", 2))
    net = nn.Sequential(conv, nn.BatchNorm2d(8))
    net.train()(torch.randn(4, 3, 8, 8))  # initialize the quantizers from data
    return net.eval()


def test_running_stats_are_the_average_over_the_batches_of_the_quantized_conv():
    net = _net()
    conv, bn = net[0], net[1]
    basis, step = conv.weight_quantizer.basis.clone(), conv.input_quantizer.step.detach().clone()
    batches = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) * (i + 1)
               for i in range(3)]
    assert reestimate_bn(net, batches, 3) == 3
    with torch.no_grad():
        outs = [conv(b) for b in batches]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, rtol=1e-4)
    assert bn.momentum == 0.1 and not net.training
    # the quantizers did not move: LQ-Net's basis (refit in training mode) and the LSQ step
    assert torch.equal(conv.weight_quantizer.basis, basis)
    assert torch.equal(conv.input_quantizer.step.detach(), step)
