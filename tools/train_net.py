#!/usr/bin/env python
"""Train, calibrate or evaluate a (quantized) RetinaNet/FCOS detector from a yacs config.

    python tools/train_net.py --config-file configs/digits/fcos_R_18_FPN.yaml
    python tools/train_net.py --config-file CFG --resume      # continue the run in OUTPUT_DIR
    python tools/train_net.py --config-file CFG --overwrite   # replace it (deletes it first)
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    torchrun --nproc_per_node 2 tools/train_net.py --config-file CFG   # multi-process (gloo on CPU)
"""
import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from quant_det.config import add_quant_det_config
from quant_det.convert import QuantizationSpec
from quant_det.engine.config_file import merge_config_file
from quant_det.engine.distributed import launch
from quant_det.engine.output_dir import unlock_output_dir, write_results
from quant_det.engine.preflight import check_run, is_eval_only
from quant_det.engine.trainer import Trainer, make_torchscript_reproducible


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


def setup(args):
    """(cfg, spec): the frozen cfg, and MODEL.QUANTIZATION validated once, passed on as `spec`.
    Every input is checked before OUTPUT_DIR is written; it stays locked until `main` returns."""
    cfg = get_cfg()
    add_quant_det_config(cfg)  # our keys, each documented in quant_det/config.py
    notes = merge_config_file(cfg, args)  # the yaml (an original-fork one translated) + KEY VALUE
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"  # the same yaml runs on a GPU machine and on this CPU one
    spec = QuantizationSpec.from_config(cfg)  # ValueError/KeyError naming the key and choices
    notes += check_run(cfg, spec, args)  # solver, weights, data, model; freezes cfg, locks OUTPUT_DIR
    try:
        default_setup(cfg, args)  # writes config.yaml, log.txt; logging for detectron2 and fvcore
        logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="quant_det")
        for note in notes:
            logger.info(note)
        if cfg.SEED >= 0:
            make_torchscript_reproducible()  # a resumed run computes what the uninterrupted one did
    except BaseException:
        unlock_output_dir(cfg.OUTPUT_DIR)
        raise
    return cfg, spec


def main(args):
    """Train (MODE qat), calibrate (MODE calibrate) or evaluate (--eval-only / MODE eval); return
    the evaluation results (also written to OUTPUT_DIR/eval_results.json)."""
    cfg, spec = setup(args)
    try:
        if is_eval_only(args, spec):
            results = Trainer.evaluate(cfg, spec)  # MODEL.WEIGHTS or the checkpoint setup chose
        elif spec.mode == "calibrate":
            results = Trainer.calibrate(cfg, spec)  # post-training quantization, saved
        else:
            trainer = Trainer(cfg, spec)
            trainer.resume_or_load(resume=args.resume)
            results = trainer.train()
        write_results(cfg.OUTPUT_DIR, results)
        return results
    finally:
        unlock_output_dir(cfg.OUTPUT_DIR)


if __name__ == "__main__":
    launch(main, argument_parser().parse_args())
