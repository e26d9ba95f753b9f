"""An all-zero input (e.g. ReLU after a layer whose first quantized outputs are all negative) must not
set a learned range: it passes through exactly and the first non-zero batch initializes."""
import pytest
import torch

from quant_det.quantizers import build_quantizer, set_calibration
from quant_det.quantizers.lsq import mse_step


def _quantizer(method, role, rule="paper"):
    q = build_quantizer(method, role, 2)
    if method == "lsq":
        q.init_rule = rule
    return q.train()


@pytest.mark.parametrize("method,role,rule", [("lsq", "act", "paper"), ("lsq", "act", "mse"),
                                              ("lsq", "weight", "mse"), ("pact", "act", "paper"),
                                              ("lqnet", "act", "paper"), ("lqnet", "weight", "paper")])
def test_zero_batch_leaves_quantizer_uninitialized_then_data_initializes(method, role, rule):
    data = torch.rand(2, 8, 6, 6, generator=torch.Generator().manual_seed(0)) + 0.05
    zeros = torch.zeros_like(data, requires_grad=True)
    q = _quantizer(method, role, rule)
    out = q(zeros)
    assert torch.equal(out, torch.zeros_like(data)) and not q.is_initialized()
    out.sum().backward()  # the range Parameter (if any) stays in the graph, as DDP expects
    assert zeros.grad is not None and bool(torch.isfinite(zeros.grad).all())
    for p in q.parameters():
        assert p.grad is not None and bool((p.grad == 0).all())
    q.zero_grad()
    # the range now comes from the data, exactly as if the zeros had never been seen
    fresh = _quantizer(method, role, rule)
    torch.testing.assert_close(q(data), fresh(data))
    assert q.is_initialized()
    for mine, ref in zip(q.range_tensors(), fresh.range_tensors()):
        torch.testing.assert_close(mine, ref)
        assert bool((mine.abs() > 1e-3).all())


def test_mse_step_from_zero_batch_would_collapse():
    # why the guard exists: the search of an all-zero tensor returns its smallest candidate
    assert float(mse_step(torch.zeros(100), 2, 1)) < 1e-9


def test_zero_batches_do_not_count_in_calibration():
    data = torch.rand(4, 8, generator=torch.Generator().manual_seed(1)) + 0.05
    calibrated = build_quantizer("lsq", "act", 2)
    set_calibration(calibrated, True)
    with torch.no_grad():
        calibrated(torch.zeros_like(data))
        calibrated(data)
        calibrated(torch.zeros_like(data))
    set_calibration(calibrated, False)
    only_data = build_quantizer("lsq", "act", 2)
    set_calibration(only_data, True)
    with torch.no_grad():
        only_data(data)
    set_calibration(only_data, False)
    torch.testing.assert_close(calibrated.step, only_data.step)


def test_require_initialized_names_the_unset_quantizers():
    from torch import nn

    from quant_det.quantizers import require_initialized, uninitialized_quantizers

    model = nn.Sequential(build_quantizer("lsq", "act", 2), build_quantizer("pact", "act", 2),
                          build_quantizer("dorefa", "weight", 2))  # dorefa: no learned range
    assert uninitialized_quantizers(model) == ["0", "1"]
    expected = r"MODEL.WEIGHTS='w.pth' sets no range for 2 learned quantizer\(s\) \(0, 1\)"
    with pytest.raises(ValueError, match=expected):
        require_initialized(model, "w.pth")
    model.train()(torch.zeros(3))  # zeros set nothing
    assert uninitialized_quantizers(model) == ["0", "1"]
    model(torch.rand(3) + 0.1)
    assert uninitialized_quantizers(model) == []
    require_initialized(model, "w.pth")
