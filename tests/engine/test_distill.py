"""MODEL.QUANTIZATION.DISTILL: the distillation loss and its hooks on a dense detector."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from quant_det.engine.distill import Distillation, binary_kl, distillation_loss


def _outputs(seed, levels=((4, 4), (2, 2)), n=2, a=1, k=3, ctr=True):
    g = torch.Generator().manual_seed(seed)
    out = ([torch.randn(n, a * k, h, w, generator=g) for h, w in levels],
           [torch.randn(n, a * 4, h, w, generator=g) for h, w in levels])
    return out + (([torch.randn(n, a, h, w, generator=g) for h, w in levels],) if ctr else ())


def test_binary_kl_is_zero_only_at_the_teacher():
    t = torch.tensor([-3.0, 0.0, 2.0])
    assert torch.allclose(binary_kl(t, t), torch.zeros(3), atol=1e-6)
    assert (binary_kl(t + 0.5, t) > 0).all() and (binary_kl(t - 0.5, t) > 0).all()


@pytest.mark.parametrize("ctr", [False, True])
def test_distillation_loss_matches_its_formula(ctr):
    s, t = _outputs(0, ctr=ctr), _outputs(1, ctr=ctr)
    assert distillation_loss(t, t, 3).abs() < 1e-5
    total, norm = 0.0, 0.0
    for lvl in range(2):
        w = torch.sigmoid(t[0][lvl]).amax(dim=1)  # A = 1: max over the 3 classes
        p = torch.sigmoid(t[0][lvl])
        kl = p * (torch.log(p) - torch.log(torch.sigmoid(s[0][lvl]))) + \
            (1 - p) * (torch.log(1 - p) - torch.log(1 - torch.sigmoid(s[0][lvl])))
        total += kl.sum() + (w * (s[1][lvl] - t[1][lvl]).abs().sum(1)).sum()
        if ctr:
            total += (w * binary_kl(s[2][lvl], t[2][lvl])[:, 0]).sum()
        norm += w.sum()
    assert torch.allclose(distillation_loss(s, t, 3), total / norm, rtol=1e-4)


def test_hooks_add_loss_distill_in_training_only(cfg_loader, batch_maker):
    cfg = cfg_loader("configs/digits/fcos_R_18_FPN_FullBN.yaml")
    torch.manual_seed(0)
    student, teacher = build_model(cfg), build_model(cfg)
    teacher.load_state_dict(student.state_dict())
    teacher.eval()
    Distillation(student, teacher, weight=2.0)
    student.train()
    with EventStorage(0):
        losses = student(batch_maker(num_images=2, size=64))
    assert "loss_distill" in losses and "loss_fcos_cls" in losses
    # same weights: student (train-mode BN) and teacher (eval-mode BN, fresh stats) differ a little
    assert 0 < losses["loss_distill"].item()
    losses["loss_distill"].backward()
    assert student.head.cls_score.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    student.eval()
    with torch.no_grad():
        assert isinstance(student(batch_maker(num_images=1, size=64)), list)  # inference unchanged


def test_no_teacher_without_weight_or_without_quantization(cfg_loader):
    from quant_det.engine.distill import attach_distillation
    cfg = cfg_loader("configs/digits/quant/fcos_R_18_FPN_FullBN_w2a2_lsq.yaml")  # DISTILL.WEIGHT 1.0
    assert cfg.MODEL.QUANTIZATION.DISTILL.WEIGHT == 1.0
    control = cfg_loader("configs/digits/quant/fcos_R_18_FPN_FullBN_w2a2_lsq.yaml",
                         "MODEL.QUANTIZATION.SCOPE", [])
    assert attach_distillation(build_model(control), control) is None  # the float control
    cfg.MODEL.QUANTIZATION.DISTILL.WEIGHT = 0.0
    assert attach_distillation(build_model(cfg), cfg) is None
    cfg.MODEL.QUANTIZATION.DISTILL.WEIGHT = 1.0
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(ValueError, match="DISTILL.WEIGHT=1.0 needs a teacher"):
        attach_distillation(build_model(cfg), cfg)
