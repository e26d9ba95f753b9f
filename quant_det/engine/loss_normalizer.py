"""The dense detectors' loss normalizer: checkpointed, and the same for any number of processes.

detectron2 0.6's RetinaNet/FCOS divide their losses by `loss_normalizer`, an EMA (momentum 0.9,
initial value 100 resp. 300) of the number of positive anchors, kept as a plain attribute of the
model: it is not in the state dict, so `--resume` restarted it from the initial value, and each
process averaged only its own positives, so 2 processes with 2 images each trained differently
from 1 process with 4 images.

- `LossNormalizerState(model)` is a checkpointable (state_dict/load_state_dict) for the EMA.
- `make_loss_normalizer_global(model)` makes the EMA track the positives summed over all
  processes (the single-process value for the same total batch) and returns EMA / world size
  to each process, so that DDP's gradient average equals the single-process gradient. With one
  process it computes exactly what detectron2 does.
"""
import types

import torch
import torch.distributed as dist
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from torch import nn

NORMALIZER = "loss_normalizer"


def _detector(model: nn.Module):
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return module if isinstance(module, DenseDetector) else None


class LossNormalizerState:
    """Checkpointable holding a DenseDetector's `loss_normalizer` EMA ({} for other models)."""

    def __init__(self, model: nn.Module):
        self._detector = _detector(model)

    def state_dict(self):
        value = getattr(self._detector, NORMALIZER, None)
        return {} if value is None else {NORMALIZER: float(value)}

    def load_state_dict(self, state):
        if self._detector is not None and NORMALIZER in state:
            setattr(self._detector, NORMALIZER, float(state[NORMALIZER]))


def _global_ema_update(self, name, value, initial_value, momentum=0.9):
    """DenseDetector._ema_update over the sum of `value` across processes; returns EMA / world."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        total = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(total)
        value = total.item()
    old = getattr(self, name, initial_value)
    new = old * momentum + value * (1 - momentum)
    setattr(self, name, new)
    return new / world


def make_loss_normalizer_global(model: nn.Module) -> nn.Module:
    """Replace the `_ema_update` of a DenseDetector instance (no-op for other models); return model."""
    detector = _detector(model)
    if detector is not None:
        # No public hook: DenseDetector.losses() calls this private method of detectron2 0.6's
        # RetinaNet and FCOS alike, and replacing it per instance covers both without subclassing.
        detector._ema_update = types.MethodType(_global_ema_update, detector)
    return model
