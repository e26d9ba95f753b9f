"""Helpers of the reliability tests: a 40/10-image digits-det and tools/train_net.py command lines.

Every run uses one thread per process (the CI machine has 2 cores) and a small FCOS-R18 W4A4 LSQ
(FPN 64 channels, one conv per head tower) so a 12-iteration run with evaluation takes ~15 s.
"""
import hashlib
import json
import os
import socket
import sys

import torch

from conftest import REPO, load_train_net

CONFIG = os.path.join(REPO, "configs/digits/quant/fcos_R_18_FPN_w4a4_lsq.yaml")
SMALL = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()",
         "SOLVER.BASE_LR", "0.01", "DATALOADER.NUM_WORKERS", "0", "QUANT_DET.LOG_PERIOD", "1",
         "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.FCOS.NUM_CONVS", "1",
         "MODEL.FCOS.SCORE_THRESH_TEST", "0.01", "SEED", "3",
         # trained from scratch: there is no FP32 parent to distil from
         "MODEL.QUANTIZATION.DISTILL.WEIGHT", "0.0"]


def make_small_digits(root):
    """Build digits-det with 40 train / 10 val images under `root`/digits_det; return `root`."""
    from quant_det.data import build_digits_det
    build_digits_det(os.path.join(root, "digits_det"), num_train=40, num_val=10, exist_ok=True)
    return str(root)


def env_for(datasets_root):
    return dict(os.environ, QUANT_DET_DATASETS=str(datasets_root), OMP_NUM_THREADS="1",
                MKL_NUM_THREADS="1", PYTHONPATH=REPO)


def train_command(out_dir, *opts, resume=False, launcher=()):
    """argv of tools/train_net.py on CONFIG + SMALL + opts (prefixed by `launcher`, e.g. torchrun)."""
    script = os.path.join(REPO, "tools", "train_net.py")
    head = list(launcher) if launcher else [sys.executable]
    return head + [script, "--config-file", CONFIG] + (["--resume"] if resume else []) + [
        "OUTPUT_DIR", str(out_dir), *SMALL, *map(str, opts)]


def torchrun(nproc):
    """torchrun argv on a free local port (--master_port 0 hangs with the static rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "--monitor_interval", "0.5"]


def model_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def metrics(out_dir):
    """The rows of OUTPUT_DIR/metrics.json that hold a total_loss, by iteration."""
    with open(os.path.join(out_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["iteration"]: r for r in rows if "total_loss" in r}


def md5s(root):
    """{path relative to `root`: md5 of its bytes} for every file under `root`, hidden ones too."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.md5(f.read()).hexdigest()
    return found


def run_args(out_dir, *opts, flags=()):
    """Parsed tools/train_net.py arguments: CONFIG + SMALL + opts into `out_dir`, with `flags`
    such as "--resume", "--eval-only", "--overwrite"."""
    return load_train_net().argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, "OUTPUT_DIR", str(out_dir), *SMALL, *map(str, opts)])
