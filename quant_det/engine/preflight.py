"""What `tools/train_net.py` checks before it writes anything into OUTPUT_DIR.

A bad input must stop the run with an error naming the key, file or value, and leave every file
of OUTPUT_DIR byte-identical. So `check_run`, called by train_net.py's `setup` before detectron2's
`default_setup` writes config.yaml and log.txt, runs every check below, then locks OUTPUT_DIR and
refuses or clears a previous run there (see output_dir.py):

- `check_solver_keys`: SOLVER.IMS_PER_BATCH, SOLVER.CHECKPOINT_PERIOD, QUANT_DET.LOG_PERIOD, ...
  (detectron2 would fail late, e.g. with a ZeroDivisionError after training started);
- `check_weight_files` / `resolve_eval_weights`: MODEL.WEIGHTS / WEIGHT_EXTRA are files; an
  --eval-only run has weights (or evaluates OUTPUT_DIR's last checkpoint, saying so) and writes
  into `eval_only/<weights>` when OUTPUT_DIR holds a run;
- `check_datasets`: registered names, annotation files (quant_det/data/validate.py), images;
- `check_num_classes`: the model's number of classes is the data sets';
- `check_model_and_weights`: builds the model on CPU (SCOPE, SKIP, POLICY) and loads the weights
  or the checkpoint to resume into it, which runs every checkpoint check (architecture, shapes,
  quantization config); the model is then discarded.
"""
import difflib
import os
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..checkpoint.io import not_a_checkpoint_file
from ..data import register_datasets_for
from ..data.validate import validate_coco_json
from .distributed import check_same_config, on_main_process
from .output_dir import eval_only_dir, last_checkpoint_file, prepare_output_dir, run_files

# key -> (smallest allowed value, what it is)
POSITIVE_KEYS = {
    "SOLVER.IMS_PER_BATCH": (1, "total images per iteration, over all processes"),
    "SOLVER.CHECKPOINT_PERIOD": (1, "iterations between checkpoints"),
    "QUANT_DET.LOG_PERIOD": (1, "iterations between log lines / metrics.json rows"),
    "SOLVER.MAX_ITER": (0, "number of training iterations"),
    "SOLVER.WARMUP_ITERS": (0, "iterations of learning-rate warm-up"),
    "TEST.EVAL_PERIOD": (0, "iterations between evaluations; 0 = only at the end"),
    "DATALOADER.NUM_WORKERS": (0, "data-loading processes"),
}
NUM_CLASSES_KEYS = {"FCOS": "MODEL.FCOS.NUM_CLASSES", "RetinaNet": "MODEL.RETINANET.NUM_CLASSES"}


def is_eval_only(args, spec) -> bool:
    """--eval-only, or MODEL.QUANTIZATION.MODE "eval"."""
    return bool(args.eval_only) or spec.mode == "eval"


def check_run(cfg, spec, args) -> List[str]:
    """Check the run `args` asks for (cfg not frozen; `spec`: its validated MODEL.QUANTIZATION),
    freeze cfg, register its data sets, then, on the main process, check the data sets and the
    model + weights and lock/refuse/clear OUTPUT_DIR; return log lines saying what was chosen.

    The lock is held until `unlock_output_dir(cfg.OUTPUT_DIR)` (train_net.py's `main` ends with it).
    An --eval-only run may change cfg.OUTPUT_DIR and MODEL.WEIGHTS (see `resolve_eval_weights`).
    """
    check_solver_keys(cfg, comm.get_world_size())
    eval_only, overwrite = is_eval_only(args, spec), getattr(args, "overwrite", False)
    if overwrite and (args.resume or eval_only):
        raise ValueError(f"--overwrite cannot go with {'--resume' if args.resume else '--eval-only'}: "
                         "--overwrite deletes the run in OUTPUT_DIR and starts a new one")
    # What the run loads: OUTPUT_DIR's last checkpoint (training with --resume) or the weights.
    resumes = args.resume and not eval_only and spec.mode != "calibrate"
    if eval_only:
        notes = resolve_eval_weights(cfg, args.resume)
    else:
        notes = []
        check_weight_files(cfg, resumes)
    cfg.freeze()
    check_same_config(cfg)
    register_datasets_for(cfg)
    names = {"DATASETS.TEST": list(cfg.DATASETS.TEST)}
    if not eval_only:
        names = {"DATASETS.TRAIN": list(cfg.DATASETS.TRAIN), **names}

    def on_main():
        check_datasets(cfg, names)
        check_num_classes(cfg, [n for group in names.values() for n in group])
        check_model_and_weights(cfg, spec, resume=resumes)
        # An --eval-only run writes only its results, in a folder of its own if OUTPUT_DIR holds a run.
        return prepare_output_dir(cfg.OUTPUT_DIR, resume=args.resume, overwrite=overwrite,
                                  refuse=not eval_only)
    return notes + (on_main_process(on_main) or [])


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def check_solver_keys(cfg, world_size: int = 1) -> None:
    """ValueError naming the key, its value and what is allowed, for the keys in POSITIVE_KEYS
    and an IMS_PER_BATCH that the number of processes does not divide."""
    for key, (low, what) in POSITIVE_KEYS.items():
        value = _get(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key}={value!r} is invalid: allowed an int >= {low} ({what})")
    batch = cfg.SOLVER.IMS_PER_BATCH
    if batch % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={batch} is not divisible by the {world_size} "
                         f"processes: allowed a multiple of {world_size}")


def _local(path: str) -> bool:
    return bool(path) and "://" not in path


def check_weight_files(cfg, resume: bool) -> None:
    """FileNotFoundError/ValueError naming MODEL.WEIGHTS or MODEL.WEIGHT_EXTRA if it is not a file
    (a directory names the checkpoint inside it). Not checked when resuming from OUTPUT_DIR's
    last checkpoint (which replaces them). URLs (detectron2://, https://) are left to the loader."""
    if resume and last_checkpoint_file(cfg.OUTPUT_DIR):
        return
    for key in ("MODEL.WEIGHTS", "MODEL.WEIGHT_EXTRA"):
        path = _get(cfg, key)
        if _local(path) and not os.path.isfile(path):
            raise not_a_checkpoint_file(path, key=key)


def resolve_eval_weights(cfg, resume: bool) -> List[str]:
    """For an --eval-only run (cfg not frozen): choose the weights and the output folder; return
    log lines saying what was chosen.

    Weights: OUTPUT_DIR's last checkpoint with --resume (if there is one), else MODEL.WEIGHTS /
    WEIGHT_EXTRA, else, when both are empty, OUTPUT_DIR's last checkpoint; without any of these
    a ValueError. Output: when OUTPUT_DIR holds a run, OUTPUT_DIR/eval_only/<weights>, so that
    the run's own eval_results.json, config.yaml and inference/ stay as they are.
    """
    out, notes = cfg.OUTPUT_DIR, []
    last = last_checkpoint_file(out)
    if last and (resume or not (cfg.MODEL.WEIGHTS or cfg.MODEL.WEIGHT_EXTRA)):
        why = "--resume" if resume else "MODEL.WEIGHTS is empty"
        notes.append(f"--eval-only: {why}: evaluating OUTPUT_DIR's last checkpoint {last}")
        cfg.MODEL.WEIGHTS, cfg.MODEL.WEIGHT_EXTRA = last, ""
    elif not (cfg.MODEL.WEIGHTS or cfg.MODEL.WEIGHT_EXTRA):
        raise ValueError(f"--eval-only needs weights: MODEL.WEIGHTS is empty and OUTPUT_DIR {out!r} "
                         f"has no last_checkpoint; set MODEL.WEIGHTS path/to/model_final.pth")
    check_weight_files(cfg, resume=False)
    if run_files(out):
        cfg.OUTPUT_DIR = eval_only_dir(out, cfg.MODEL.WEIGHTS or cfg.MODEL.WEIGHT_EXTRA)
        notes.append(f"--eval-only: OUTPUT_DIR {out} holds a run; this evaluation writes to "
                     f"{cfg.OUTPUT_DIR} and leaves the run's files as they are")
    return notes


def check_datasets(cfg, names_by_key) -> None:
    """KeyError for a data set name that is not registered; for COCO-json data sets, the
    annotation file and images are validated (see quant_det/data/validate.py).

    `names_by_key`: {"DATASETS.TRAIN": [...], "DATASETS.TEST": [...]}.
    """
    registered = DatasetCatalog.list()
    for key, names in names_by_key.items():
        for name in names:
            if name not in registered:
                close = difflib.get_close_matches(name, registered, n=3)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise KeyError(f"{key}: {name!r} is not a registered data set{hint}")
            meta = MetadataCatalog.get(name)
            if meta.get("json_file", None):
                validate_coco_json(meta.json_file, meta.get("image_root", None), f"{key} {name!r}")


def check_num_classes(cfg, dataset_names) -> None:
    """ValueError if a data set's metadata has another number of classes than the model's key."""
    key = NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE, "MODEL.ROI_HEADS.NUM_CLASSES")
    want = _get(cfg, key)
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != want:
            raise ValueError(f"{key}={want} but data set {name!r} has {len(classes)} classes "
                             f"({', '.join(map(str, classes[:12]))}); set {key} {len(classes)}")


def check_model_and_weights(cfg, spec, resume: bool) -> None:
    """Build the model on CPU (`spec`: the validated MODEL.QUANTIZATION) and load what the run
    will load into it (see module docstring)."""
    from .trainer import Trainer, build_checkpointer  # trainer imports detectron2's engine

    cpu = cfg.clone()
    cpu.defrost()
    cpu.MODEL.DEVICE = "cpu"
    cpu.freeze()
    model = Trainer.build_model(cpu, spec)
    build_checkpointer(cpu, model).resume_or_load(cpu.MODEL.WEIGHTS, resume=resume)
