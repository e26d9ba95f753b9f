"""`TrainingHealthCheck`: stop a diverged run before it writes a bad checkpoint.

detectron2's SimpleTrainer already raises FloatingPointError (naming the iteration and every loss
term) when the loss is NaN/inf, before the optimizer step. What it misses, and this hook checks
after every optimizer step (placed before the PeriodicCheckpointer, so a failed check means no
checkpoint of this iteration is written):

- a learned quantizer range that collapsed: an LSQ step or PACT clip <= 0 (or NaN); the forward
  pass would silently clamp it to 1e-8 and quantize everything to zero;
- a parameter that became NaN/inf (e.g. from an infinite gradient with a finite loss).

The error is a `TrainingDivergedError` (a FloatingPointError) naming the iteration, the module or
parameter, the bad value and the last good checkpoint.
"""
import torch
from detectron2.engine import HookBase
from torch import nn

from ..quantizers import LearnedRangeQuantizer
from ..quantizers.lqnet import LQNetQuantizer


class TrainingDivergedError(FloatingPointError):
    """Training produced non-finite values or a collapsed quantizer range; checkpoints are kept."""


def last_good_checkpoint(checkpointer) -> str:
    """The file `last_checkpoint` points at, or a note that there is none."""
    if checkpointer is not None and checkpointer.has_checkpoint():
        return checkpointer.get_checkpoint_file()
    return "(none written yet)"


def collapsed_quantizer_ranges(model: nn.Module):
    """[(quantizer module name, smallest range value)] of learned ranges that are <= 0 or NaN.

    LQ-Net bases are excluded: their sign is free (the levels are sums of +-basis).
    """
    bad = []
    for name, module in model.named_modules():
        if not isinstance(module, LearnedRangeQuantizer) or isinstance(module, LQNetQuantizer):
            continue
        if not module.is_initialized():
            continue
        for tensor in module.range_tensors():
            low = tensor.detach().min()
            if not bool(low > 0):
                bad.append((name, float(low)))
    return bad


def non_finite_parameters(model: nn.Module):
    """Names of parameters holding a NaN or inf."""
    return [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]


class TrainingHealthCheck(HookBase):
    """After each step, raise TrainingDivergedError on collapsed quantizer ranges or NaN/inf weights."""

    def __init__(self, model: nn.Module, checkpointer=None):
        self._model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self._checkpointer = checkpointer

    def after_step(self):
        it = self.trainer.iter
        collapsed = collapsed_quantizer_ranges(self._model)
        if collapsed:
            listed = ", ".join(f"{n} (min {v:.3g})" for n, v in collapsed[:5])
            self._fail(f"iteration {it}: learned quantizer range collapsed to <= 0 in "
                       f"{len(collapsed)} quantizer(s): {listed}; lower SOLVER.BASE_LR or check "
                       f"MODEL.QUANTIZATION")
        bad = non_finite_parameters(self._model)
        if bad:
            self._fail(f"iteration {it}: {len(bad)} parameter(s) became NaN/inf after the optimizer "
                       f"step: {', '.join(bad[:5])}")

    def _fail(self, message):
        raise TrainingDivergedError(
            f"{message}. No checkpoint was written for this iteration; last good checkpoint: "
            f"{last_good_checkpoint(self._checkpointer)}")
