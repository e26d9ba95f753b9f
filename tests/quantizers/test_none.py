"""Method "none" is the identity: the same tensor object, bit-identical values and gradients."""
import torch

from quant_det.quantizers import build_quantizer


def test_none_returns_input_itself_and_passes_gradient():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    for role in ("weight", "act"):
        q = build_quantizer("none", role, 4).train()
        y = q(x)
        assert y is x
        assert list(q.parameters()) == [] and list(q.buffers()) == []
    g = torch.randn_like(x)
    y.backward(g)
    assert torch.equal(x.grad, g)
