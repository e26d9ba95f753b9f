"""What `tools/train_net.py` does: config set-up, then train / calibrate / evaluate.

Example:
    python tools/train_net.py --config-file configs/digits/fcos_R_18_FPN.yaml OUTPUT_DIR out/fcos
"""
import contextlib
import difflib
import json
import logging
import os

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .. import modeling  # noqa: F401  (registers FCOS and the FPN-BN backbone)
from ..porting.compat import is_original_config, merge_original_config
from ..config import add_quant_det_config
from ..convert import QuantizationSpec
from ..data import register_datasets_for
from .calibrate import calibrate, reestimate_bn
from .distributed import check_same_config, init_distributed_from_env, on_main_process
from .output_dir import drop_metrics_from, prepare_output_dir, unlock_output_dir
from .preflight import (check_datasets, check_model_and_weights, check_solver_keys,
                        check_weight_files, resolve_eval_weights)
from .trainer import Trainer, build_checkpointer, check_num_classes

logger = logging.getLogger("quant_det")
RESULTS_FILE = "eval_results.json"


def argument_parser():
    """detectron2's parser (--config-file, --eval-only, --resume, --num-gpus, KEY VALUE ...)."""
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--allow-original-key", action="append", default=[], metavar="KEY_PREFIX",
        help="for a yaml written for the original low-bit fork: accept losing the behaviour of "
             "these keys (see quant_det/porting/compat.py) instead of refusing the file")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in an OUTPUT_DIR that holds one, deleting that run's checkpoints, "
             "metrics, logs and results first (without it, or --resume, such a folder is refused)")
    return parser


def is_eval_only(args, cfg) -> bool:
    """--eval-only, or MODEL.QUANTIZATION.MODE "eval"."""
    return bool(args.eval_only) or cfg.MODEL.QUANTIZATION.MODE == "eval"


def setup(args):
    """detectron2's `setup(args) -> cfg`: `setup_run` without the spec (a `Trainer(cfg)` built
    from this cfg validates MODEL.QUANTIZATION itself)."""
    return setup_run(args)[0]


def setup_run(args):
    """Build the frozen cfg from the yaml + overrides, validate MODEL.QUANTIZATION (once: the
    returned QuantizationSpec is passed on), check everything that can be checked before
    OUTPUT_DIR is touched (see preflight.py), lock and prepare OUTPUT_DIR (see output_dir.py),
    register data sets, set up logging. Returns (cfg, spec). The lock is held until `main` returns."""
    cfg = get_cfg()
    add_quant_det_config(cfg)
    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"--config-file {args.config_file!r} does not exist")
    notes = []
    with suggest_config_keys(cfg):
        if is_original_config(args.config_file):  # written for the original fork: translate
            notes = [f"original-fork config: {n}" for n in merge_original_config(
                cfg, args.config_file, allow=getattr(args, "allow_original_key", ()))]
        else:
            cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"  # the same yaml runs on a GPU machine and on this CPU one
    spec = QuantizationSpec.from_config(cfg)  # the one validation; fails before any output is written
    check_solver_keys(cfg, comm.get_world_size())
    eval_only, overwrite = is_eval_only(args, cfg), getattr(args, "overwrite", False)
    if overwrite and (args.resume or eval_only):
        raise ValueError(f"--overwrite cannot go with {'--resume' if args.resume else '--eval-only'}: "
                         "--overwrite deletes the run in OUTPUT_DIR and starts a new one")
    # What the run loads: OUTPUT_DIR's last checkpoint (training with --resume) or the weights.
    resumes = args.resume and not eval_only and cfg.MODEL.QUANTIZATION.MODE != "calibrate"
    if eval_only:
        notes += resolve_eval_weights(cfg, args.resume)
    else:
        check_weight_files(cfg, resumes)
    cfg.freeze()
    check_same_config(cfg)
    register_datasets_for(cfg)
    notes += on_main_process(
        lambda: preflight(cfg, spec, args.resume, resumes, eval_only, overwrite)) or []
    try:
        default_setup(cfg, args)
        # default_setup configures only the "detectron2" and "fvcore" loggers.
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="quant_det")
        for note in notes:
            logger.info(note)
        if cfg.SEED >= 0:
            make_torchscript_reproducible()
    except BaseException:
        unlock_output_dir(cfg.OUTPUT_DIR)
        raise
    return cfg, spec


def preflight(cfg, spec, resume, resumes, eval_only, overwrite):
    """Main process: data sets, model + weights (`resumes`: from the last checkpoint), then
    lock/refuse/clear OUTPUT_DIR; returns log lines."""
    names = {"DATASETS.TEST": list(cfg.DATASETS.TEST)}
    if not eval_only:
        names = {"DATASETS.TRAIN": list(cfg.DATASETS.TRAIN), **names}
    check_datasets(cfg, names)
    check_num_classes(cfg, [n for group in names.values() for n in group])
    check_model_and_weights(cfg, spec, resume=resumes)
    # An --eval-only run writes only its results, in a folder of its own if OUTPUT_DIR holds a run.
    return prepare_output_dir(cfg.OUTPUT_DIR, resume=resume, overwrite=overwrite, refuse=not eval_only)


def make_torchscript_reproducible():
    """Run TorchScript functions unoptimized for the whole process (called when SEED >= 0).

    Why: the profiling executor runs a scripted function (fvcore's sigmoid_focal_loss_jit, used
    by RetinaNet/FCOS) eagerly for its first calls and then switches to an optimized graph with
    JIT-derived gradients, which differ from eager autograd in the last bits. A process resumed
    at iteration k would compute k and k+1 differently from the uninterrupted run, and low-bit
    rounding amplifies such differences. Unoptimized execution is the same at every call.
    """
    torch._C._set_graph_executor_optimize(False)


@contextlib.contextmanager
def suggest_config_keys(cfg):
    """Re-raise yacs' unknown-key errors (a KeyError from a yaml, an AssertionError from KEY VALUE
    overrides) as a KeyError that also names the closest valid keys."""
    try:
        yield
    except (KeyError, AssertionError) as e:
        message = str(e.args[0]) if e.args else ""
        if not message.startswith(("Non-existent config key: ", "Non-existent key: ")):
            raise
        key = message.split(": ", 1)[1]
        close = difflib.get_close_matches(key, _flat_keys(cfg), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise KeyError(f"{key!r} is not a config key{hint} (valid keys are listed in "
                       f"detectron2/config/defaults.py and quant_det/config.py)") from None


def _flat_keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, CfgNode):
            yield from _flat_keys(v, f"{prefix}{k}.")
        else:
            yield prefix + k


def write_results(cfg, results):
    """Write evaluation results to OUTPUT_DIR/eval_results.json atomically (main process only)."""
    if not comm.is_main_process() or not results:
        return
    path = os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def evaluate(cfg, spec):
    """Load MODEL.WEIGHTS (chosen by `resolve_eval_weights`) into the quantized model, re-estimate
    its BN statistics if MODEL.QUANTIZATION.BN_REESTIMATE_ITERS > 0 (not saved); evaluate."""
    model = Trainer.build_model(cfg, spec)
    build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    iters = spec.bn_reestimate_iters
    if iters > 0:
        seen = reestimate_bn(model, Trainer.build_train_loader(cfg), iters)
        logger.info(f"BatchNorm statistics re-estimated with quantization on ({seen} batches)")
    return Trainer.test(cfg, model)


def run_calibration(cfg, spec):
    """PTQ: load weights, calibrate quantizers and BN on CALIB_ITERS batches, save, evaluate."""
    model = Trainer.build_model(cfg, spec)
    checkpointer = build_checkpointer(cfg, model)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    seen = calibrate(model, Trainer.build_train_loader(cfg), spec.calib_iters)
    logger.info(f"calibrated on {seen} batches")
    if comm.is_main_process():
        checkpointer.save("model_final")
    return Trainer.test(cfg, model)


def train(cfg, spec, resume):
    """QAT / float training; on --resume, metrics.json rows the resumed run redoes are dropped."""
    trainer = Trainer(cfg, spec)
    trainer.resume_or_load(resume=resume)
    if resume and comm.is_main_process():
        dropped = drop_metrics_from(cfg.OUTPUT_DIR, trainer.start_iter)
        if dropped:
            logger.info(f"metrics.json: dropped {dropped} line(s) of iterations >= "
                        f"{trainer.start_iter} (written after the resumed checkpoint)")
    trainer.train()
    # DefaultTrainer.train() returns the final evaluation only if TEST.EXPECTED_RESULTS is set
    return getattr(trainer, "_last_eval_results", None)


def main(args):
    """Train (MODE qat), calibrate (MODE calibrate) or evaluate (--eval-only / MODE eval)."""
    init_distributed_from_env()
    cfg, spec = setup_run(args)
    try:
        if is_eval_only(args, cfg):
            results = evaluate(cfg, spec)
        elif spec.mode == "calibrate":
            results = run_calibration(cfg, spec)
        else:
            results = train(cfg, spec, args.resume)
        write_results(cfg, results)
        return results
    finally:
        unlock_output_dir(cfg.OUTPUT_DIR)
