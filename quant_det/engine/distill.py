"""Knowledge distillation from a full-precision teacher during QAT (MODEL.QUANTIZATION.DISTILL).

The teacher is the same detector with quantization off, loaded from DISTILL.TEACHER (default:
MODEL.WEIGHT_EXTRA, else MODEL.WEIGHTS, i.e. the FP32 parent), frozen and in eval mode. It lives
outside the student's module tree: it is neither saved in the student's checkpoints nor trained.

`attach_distillation(model, cfg)` registers two forward hooks on the student (a detectron2
`DenseDetector`: RetinaNet or FCOS): one keeps its head's raw outputs, the other, in training,
runs the teacher's backbone + head on the same images and adds to the loss dict

    loss_distill = WEIGHT * (KL_cls + L1_box [+ KL_ctr]) / sum(w)

over every anchor of every level, where w is the teacher's highest class probability at that
anchor, KL_cls the binary KL divergence sum_k KL(sigmoid(t_k) || sigmoid(s_k)) of the class
logits, L1_box the w-weighted |s - t| of the box deltas and KL_ctr (FCOS) the w-weighted binary
KL of the centerness logits. Anchors where the teacher sees no object barely count in the box
terms, and the loss is 0 when the student matches the teacher.
"""
import logging

import torch
from detectron2.modeling import build_model
from torch import nn
from torch.nn import functional as F

from ..checkpoint import QuantDetCheckpointer
from .distributed import cpu_sync_batchnorm

logger = logging.getLogger(__name__)
KEY = "MODEL.QUANTIZATION.DISTILL"


def binary_kl(student_logits, teacher_logits):
    """Element-wise KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s))): >= 0, 0 iff s == t."""
    p = torch.sigmoid(teacher_logits)
    return (F.binary_cross_entropy_with_logits(student_logits, p, reduction="none")
            - F.binary_cross_entropy_with_logits(teacher_logits, p, reduction="none"))


def distillation_loss(student_out, teacher_out, num_classes):
    """The (unweighted) distillation loss between two dense heads' outputs.

    Each output is a tuple of per-level lists: (class logits [N, A*K, H, W], box deltas
    [N, A*4, H, W]) and, for FCOS, centerness logits [N, A, H, W]. Returns a 0-d tensor.
    """
    total, norm = 0.0, 0.0
    for level in range(len(student_out[0])):
        s_cls, t_cls = student_out[0][level], teacher_out[0][level]
        n, _, h, w = t_cls.shape
        t_prob = torch.sigmoid(t_cls).view(n, -1, num_classes, h, w)
        weight = t_prob.amax(dim=2)  # [N, A, H, W]
        norm = norm + weight.sum()
        total = total + binary_kl(s_cls, t_cls).sum()
        s_box, t_box = student_out[1][level], teacher_out[1][level]
        box_l1 = (s_box - t_box).abs().view(n, weight.shape[1], -1, h, w).sum(dim=2)
        total = total + (weight * box_l1).sum()
        if len(student_out) > 2:  # FCOS centerness
            total = total + (weight * binary_kl(student_out[2][level], teacher_out[2][level])).sum()
    return total / norm.clamp_min(1.0)


def build_teacher(cfg):
    """The frozen FP32 teacher of `cfg` (quantization off), in eval mode, on cfg's device."""
    path = (cfg.MODEL.QUANTIZATION.DISTILL.TEACHER or cfg.MODEL.WEIGHT_EXTRA or cfg.MODEL.WEIGHTS)
    if not path:
        raise ValueError(f"{KEY}.WEIGHT={cfg.MODEL.QUANTIZATION.DISTILL.WEIGHT} needs a teacher: set "
                         f"{KEY}.TEACHER (or MODEL.WEIGHT_EXTRA / MODEL.WEIGHTS) to the FP32 checkpoint")
    tcfg = cfg.clone()
    tcfg.defrost()
    tcfg.MODEL.QUANTIZATION.SCOPE = []
    teacher = build_model(tcfg)
    if tcfg.MODEL.DEVICE == "cpu":
        cpu_sync_batchnorm(teacher)
    QuantDetCheckpointer(teacher, save_dir="").load(path)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    logger.info(f"distillation: teacher {path!r}, loss weight {cfg.MODEL.QUANTIZATION.DISTILL.WEIGHT}")
    return teacher


class Distillation:
    """The two forward hooks of `attach_distillation`; holds the teacher (not an nn.Module
    attribute of the student, so it stays out of its state dict and optimizer)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, weight: float):
        self.teacher, self.weight = teacher, weight
        self.num_classes = student.num_classes
        self.student_out = None
        student.head.register_forward_hook(self._keep_head_output)
        student.register_forward_hook(self._add_loss)

    def _keep_head_output(self, module, inputs, output):
        self.student_out = output if module.training else None

    def _add_loss(self, module, inputs, output):
        if not module.training or self.student_out is None:
            return output
        t = self.teacher
        with torch.no_grad():
            images = t.preprocess_image(inputs[0])
            features = t.backbone(images.tensor)
            teacher_out = t.head([features[f] for f in t.head_in_features])
        loss = distillation_loss(self.student_out, teacher_out, self.num_classes)
        self.student_out = None
        return {**output, "loss_distill": loss * self.weight}


def attach_distillation(model: nn.Module, cfg):
    """Add the distillation loss to `model`'s training losses if DISTILL.WEIGHT > 0 and
    quantization is on (SCOPE not empty: a QAT config run with SCOPE [] is its float control,
    trained exactly like the float parent); returns the `Distillation` (or None)."""
    weight = cfg.MODEL.QUANTIZATION.DISTILL.WEIGHT
    if weight <= 0 or not cfg.MODEL.QUANTIZATION.SCOPE:
        return None
    if not hasattr(model, "head_in_features"):
        raise ValueError(f"{KEY}.WEIGHT={weight}: distillation supports the dense detectors "
                         f"(RetinaNet, FCOS), not MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}")
    return Distillation(model, build_teacher(cfg).to(next(model.parameters()).device), weight)
