"""`Trainer`: detectron2's DefaultTrainer plus quantization, WEIGHT_EXTRA, C++-free evaluation,
and what makes a killed run resumable bit-exactly (see README "Reliability").

Saved in every checkpoint, next to the model (which includes every quantizer's step/clip/flags):
the optimizer (SGD momentum: detectron2 0.6's DefaultTrainer does not save it), the LR scheduler
and iteration ("trainer"), the dense detectors' loss-normalizer EMA ("loss_normalizer") and the
data-stream seed ("data_sampler"). On `--resume` the data stream restarts at the first image the
killed run had not consumed, and metrics.json rows the resumed run redoes are dropped.

Besides training: `Trainer.evaluate` (--eval-only) and `Trainer.calibrate` (post-training
quantization), classmethods like detectron2's `Trainer.test`.
"""
import logging
import os
import weakref

import torch
from detectron2.data import (DatasetMapper, MetadataCatalog, build_detection_train_loader,
                             get_detection_dataset_dicts)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.solver.build import (get_default_optimizer_params, maybe_add_gradient_clipping,
                                     reduce_param_groups)
from detectron2.utils import comm

from .. import modeling  # noqa: F401  (registers FCOS and the FPN-BN backbone)
from ..checkpoint import QuantDetCheckpointer
from ..convert import QuantizationSpec, apply_quantization
from ..quantizers import Quantizer, require_initialized, uninitialized_quantizers
from .calibrate import calibrate as calibrate_model, reestimate_bn
from .distill import attach_distillation
from .distributed import cpu_sync_batchnorm
from .hooks import TrainingDivergedError, TrainingHealthCheck, last_good_checkpoint
from .loss_normalizer import LossNormalizerState, make_loss_normalizer_global
from .output_dir import drop_metrics_from
from .preflight import check_num_classes
from .sampler import PositionSeededDataset, ResumableTrainingSampler

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """Overrides only what quant_det changes: model, train loader, checkpointer, hooks, evaluator,
    and DDP construction on CPU."""

    def __init__(self, cfg, spec=None):
        """DefaultTrainer.__init__, except that a CPU model gets DDP(device_ids=None): detectron2 0.6
        passes device_ids=[local_rank], which torch rejects for CPU modules (torchrun on CPU).

        `spec`: MODEL.QUANTIZATION as validated by the run's setup; None validates cfg's here.
        """
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.spec = spec if spec is not None else QuantizationSpec.from_config(cfg)
        model = self.build_model(cfg, self.spec)
        self.distillation = attach_distillation(model, cfg)  # MODEL.QUANTIZATION.DISTILL
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        device_ids = None if cfg.MODEL.DEVICE == "cpu" else [comm.get_local_rank()]
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_class(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())  # also creates self.checkpointer

    @classmethod
    def build_model(cls, cfg, spec=None):
        """detectron2's model, with the layers in MODEL.QUANTIZATION.SCOPE swapped for quantized ones
        (on CPU, nn.SyncBatchNorm replaced by CPUSyncBatchNorm; see `cpu_sync_batchnorm`).

        `spec`: the validated MODEL.QUANTIZATION (QuantizationSpec); None validates cfg's here.
        """
        model = build_model(cfg)
        if cfg.MODEL.DEVICE == "cpu":
            cpu_sync_batchnorm(model)
        apply_quantization(model, spec if spec is not None else QuantizationSpec.from_config(cfg))
        return make_loss_normalizer_global(model)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD, except that MODEL.QUANTIZATION.RANGE_WEIGHT_DECAY >= 0 sets the weight
        decay of the quantizers' learned ranges (LSQ step, PACT alpha)."""
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
        decay = cfg.MODEL.QUANTIZATION.RANGE_WEIGHT_DECAY
        ranges = [p for m in model.modules() if isinstance(m, Quantizer)
                  for p in m.parameters(recurse=False) if p.requires_grad]
        if decay >= 0 and ranges:  # later groups override earlier ones, parameter by parameter
            params = reduce_param_groups(params + [{"params": ranges, "weight_decay": decay}])
        return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader over a resumable, position-seeded stream (see sampler.py).

        The returned loader carries its sampler as `loader.resumable_sampler`.
        """
        dicts = load_train_dicts(cfg)
        # Seed drawn like detectron2's TrainingSampler (same order as before); checkpointed.
        sampler = ResumableTrainingSampler(len(dicts))
        dataset = PositionSeededDataset(dicts, DatasetMapper(cfg, True), sampler)
        loader = build_detection_train_loader(
            dataset, mapper=None, sampler=sampler, total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS)
        loader.resumable_sampler = sampler
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCO bbox evaluation with pycocotools (detectron2's fast evaluator needs its C++ ops)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder,
                             use_fast_impl=False)

    def build_hooks(self):
        # The checkpointer: atomic saves, MODEL.WEIGHT_EXTRA, and everything a bit-exact resume
        # needs (detectron2 0.6's DefaultTrainer saves only model + iteration + LR scheduler).
        self._data_sampler = getattr(self.data_loader, "resumable_sampler", None)
        extra = {"data_sampler": self._data_sampler} if self._data_sampler is not None else {}
        self.checkpointer = build_checkpointer(
            self.cfg, self.model, trainer=weakref.proxy(self), optimizer=self.optimizer,
            loss_normalizer=LossNormalizerState(self.model), **extra)
        # detectron2 0.6 writes every 20 iterations: its writers (built by build_writers below)
        # go into a PeriodicWriter of QUANT_DET.LOG_PERIOD instead.
        ret = [hooks.PeriodicWriter(self.writers, period=self.cfg.QUANT_DET.LOG_PERIOD)
               if isinstance(h, hooks.PeriodicWriter) else h for h in super().build_hooks()]
        # Before the checkpointer: a diverged step must not be saved.
        savers = (hooks.PeriodicCheckpointer, hooks.EvalHook)
        first = next(i for i, h in enumerate(ret) if isinstance(h, savers))
        ret.insert(first, TrainingHealthCheck(self.model, self.checkpointer))
        if self.spec.bn_reestimate_iters > 0:  # before the final evaluation
            evals = [i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)]
            ret.insert(evals[0] if evals else len(ret), BNReestimation())
        return ret

    def build_writers(self):
        """detectron2's writers, kept as `self.writers` for the PeriodicWriter of build_hooks."""
        self.writers = super().build_writers()
        return self.writers

    def resume_or_load(self, resume=True):
        """detectron2's resume_or_load; then restart the data stream after the consumed images and
        drop the metrics.json rows of the iterations the resumed run redoes."""
        super().resume_or_load(resume=resume)
        if resume and comm.is_main_process():
            dropped = drop_metrics_from(self.cfg.OUTPUT_DIR, self.start_iter)
            if dropped:
                logger.info(f"metrics.json: dropped {dropped} line(s) of iterations >= "
                            f"{self.start_iter} (written after the resumed checkpoint)")
        sampler = self._data_sampler
        if sampler is not None and self.start_iter > 0:
            sampler.set_start(self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH)
            # SimpleTrainer created its iterator (and any worker processes) before the resume;
            # detectron2 0.6 has no public way to restart it (no reset_data_loader yet).
            self._trainer._data_loader_iter = iter(self.data_loader)
            logger.info(f"data stream resumes at image {sampler.start} (seed {sampler.seed})")

    def train(self):
        """DefaultTrainer.train; returns the final evaluation results (detectron2 returns them only
        with TEST.EXPECTED_RESULTS). A NaN/inf loss error also names the last good checkpoint."""
        try:
            super().train()
            never = uninitialized_quantizers(self.model)
            if never:
                logger.warning(f"{len(never)} learned quantizer(s) saw only all-zero inputs in training "
                               f"and keep placeholder ranges: {', '.join(never[:5])}")
            return getattr(self, "_last_eval_results", None)
        except FloatingPointError as e:
            if isinstance(e, TrainingDivergedError):
                raise
            raise TrainingDivergedError(
                f"{e}\nThe optimizer step of this iteration was not taken and no checkpoint was "
                f"written; last good checkpoint: {last_good_checkpoint(self.checkpointer)}") from e

    @classmethod
    def evaluate(cls, cfg, spec):
        """--eval-only: load MODEL.WEIGHTS into the quantized model (`spec`: the validated
        MODEL.QUANTIZATION), re-estimate its BN statistics if BN_REESTIMATE_ITERS > 0 (not
        saved), evaluate; return the results."""
        model = cls.build_model(cfg, spec)
        build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
        require_initialized(model, cfg.MODEL.WEIGHTS)
        if spec.bn_reestimate_iters > 0:
            cls.reestimate_bn_statistics(cfg, model, spec.bn_reestimate_iters)
        return cls.test(cfg, model)

    @classmethod
    def calibrate(cls, cfg, spec):
        """Post-training quantization (MODE "calibrate"): load MODEL.WEIGHTS, calibrate quantizer
        ranges and BN statistics on CALIB_ITERS batches, save model_final, evaluate; return the
        results."""
        model = cls.build_model(cfg, spec)
        checkpointer = build_checkpointer(cfg, model)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
        seen = calibrate_model(model, cls.build_train_loader(cfg), spec.calib_iters)
        logger.info(f"calibrated on {seen} batches")
        if comm.is_main_process():
            checkpointer.save("model_final")
        return cls.test(cfg, model)

    @classmethod
    def reestimate_bn_statistics(cls, cfg, model, iters):
        """Re-estimate `model`'s BN statistics with quantization on, on `iters` training batches."""
        seen = reestimate_bn(model, cls.build_train_loader(cfg), iters)
        logger.info(f"BatchNorm statistics re-estimated with quantization on ({seen} batches)")


def build_checkpointer(cfg, model, **checkpointables):
    """QuantDetCheckpointer configured from MODEL.WEIGHT_EXTRA / WEIGHT_EXTRA_DROP_MISMATCH /
    QUANTIZATION.REINIT_MISMATCHED."""
    return QuantDetCheckpointer(
        model, cfg.OUTPUT_DIR, weight_extra=cfg.MODEL.WEIGHT_EXTRA,
        drop_mismatch=cfg.MODEL.WEIGHT_EXTRA_DROP_MISMATCH,
        reinit_mismatched=cfg.MODEL.QUANTIZATION.REINIT_MISMATCHED, **checkpointables)


def load_train_dicts(cfg):
    """The DATASETS.TRAIN records; an unreadable annotation file or missing image is a clear error."""
    names = list(cfg.DATASETS.TRAIN)
    try:
        dicts = get_detection_dataset_dicts(
            names, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
    except (OSError, ValueError, AssertionError) as e:
        files = {n: MetadataCatalog.get(n).get("json_file", "(no json_file)") for n in names}
        raise ValueError(f"DATASETS.TRAIN {names}: cannot load the annotations {files}: "
                         f"{type(e).__name__}: {e}") from e
    missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if missing:
        raise FileNotFoundError(f"DATASETS.TRAIN {names}: {len(missing)} of {len(dicts)} images are "
                                f"missing, e.g. {missing[:3]}")
    check_num_classes(cfg, names)
    return dicts


class BNReestimation(hooks.HookBase):
    """After the last iteration, before the final evaluation: re-estimate BatchNorm statistics of
    the quantized model (MODEL.QUANTIZATION.BN_REESTIMATE_ITERS batches) and save model_final."""

    def after_train(self):
        trainer = self.trainer
        if trainer.iter < trainer.max_iter:  # train() ends with iter == max_iter only on success
            return
        trainer.reestimate_bn_statistics(trainer.cfg, trainer.model, trainer.spec.bn_reestimate_iters)
        if comm.is_main_process():
            trainer.checkpointer.save("model_final")


def make_torchscript_reproducible():
    """Run TorchScript functions unoptimized for the whole process (train_net.py calls it when
    SEED >= 0).

    Why: the profiling executor runs a scripted function (fvcore's sigmoid_focal_loss_jit, used
    by RetinaNet/FCOS) eagerly for its first calls and then switches to an optimized graph with
    JIT-derived gradients, which differ from eager autograd in the last bits. A process resumed
    at iteration k would compute k and k+1 differently from the uninterrupted run, and low-bit
    rounding amplifies such differences. Unoptimized execution is the same at every call.
    """
    torch._C._set_graph_executor_optimize(False)
