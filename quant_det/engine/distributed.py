"""Multi-process set-up under `torchrun` (`launch`: detectron2's asserts CUDA; we also run on CPU),
checks shared by all ranks (`check_same_config`, `on_main_process`), and the CPU replacement of
SyncBatchNorm (`CPUSyncBatchNorm`)."""
import hashlib
import os
import pickle

import torch
import torch.distributed as dist
from detectron2.utils import comm
from fvcore.nn.distributed import differentiable_all_reduce
from torch import nn


def launch(main, args):
    """Run `main(args)` in this process, one of the processes torchrun started (or the only one).

    What detectron2's `launch(main, num_gpus, ...)` is for its train_net.py, for `torchrun`: that
    one spawns --num-gpus processes itself and asserts CUDA, so --num-gpus > 1 is refused here
    with the torchrun command to use instead.
    """
    if args.num_gpus > 1:
        raise SystemExit("--num-gpus > 1: start the processes with "
                         f"`torchrun --nproc_per_node {args.num_gpus} tools/train_net.py ...` instead")
    init_distributed_from_env()
    return main(args)


def init_distributed_from_env() -> int:
    """If torchrun started several processes, init the process group; return the world size.

    Uses NCCL when CUDA is available, gloo otherwise, and creates detectron2's per-machine
    process group (`comm._LOCAL_PROCESS_GROUP`) the way `detectron2.engine.launch` does.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return world
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    for machine in range(world // local_size):
        ranks = list(range(machine * local_size, (machine + 1) * local_size))
        group = dist.new_group(ranks)
        if dist.get_rank() in ranks:
            # No public setter in detectron2 0.6 (its launch() assigns this attribute the same way).
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    return world


def _flat_config(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flat_config(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def check_same_config(cfg) -> None:
    """With several processes: compare a hash of the (frozen) config across ranks; if they differ,
    raise ValueError on every rank naming the keys that differ and each rank's value.

    Why: ranks started with different (valid) configs, e.g. on two machines, would train
    together silently, each with its own learning rate, bits or data.
    """
    if comm.get_world_size() == 1:
        return
    digests = comm.all_gather(hashlib.sha256(cfg.dump().encode("utf-8")).hexdigest())
    if len(set(digests)) == 1:
        return
    configs = [dict(_flat_config(c)) for c in comm.all_gather(cfg)]
    keys = sorted(set().union(*configs))
    differing = [k for k in keys if any(c.get(k, "(missing)") != configs[0].get(k, "(missing)")
                                        for c in configs)]
    listed = "; ".join(f"{k}: " + ", ".join(f"rank {r} {c.get(k, '(missing)')!r}"
                                           for r, c in enumerate(configs)) for k in differing[:8])
    raise ValueError(f"the {len(configs)} processes were started with different configs "
                     f"({len(differing)} key(s) differ): {listed}; start every rank with the same "
                     f"--config-file and KEY VALUE options")


def on_main_process(fn):
    """Run `fn()` on the main process only and return its result there (None elsewhere); if it
    raises, every process raises that error (so that no rank waits for a failed one)."""
    result, error = None, None
    if comm.is_main_process():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 (re-raised below, on every rank)
            error = e
    if comm.get_world_size() > 1:
        shared = error
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001 (an error type that does not pickle: send its text)
            shared = RuntimeError(f"{type(error).__name__}: {error}")
        shared = comm.all_gather(shared if comm.is_main_process() else None)[0]
        error = error if comm.is_main_process() else shared
    if error is not None:
        raise error
    return result


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the batch of all processes, for any backend (gloo on CPU included).

    Training with several processes: all-reduces, with gradients, the per-channel count and sum,
    then the sum of squared deviations from the global mean; normalizes with the biased global
    variance and updates the running variance with the unbiased one, as `nn.SyncBatchNorm` does
    and as one process holding the whole batch would (up to float summation order). Otherwise
    it is plain BatchNorm2d. Same state-dict keys.
    """

    def forward(self, x):
        if not self.training or comm.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = differentiable_all_reduce(torch.cat([count, x.sum(dim=(0, 2, 3))]))
        n, mean = stats[0], stats[1:] / stats[0]
        centered = x - mean.view(1, c, 1, 1)
        # Two passes (global mean, then the centered sum of squares), as BatchNorm2d computes it:
        # E[x^2] - E[x]^2 loses digits when |mean| >> std.
        var = differentiable_all_reduce((centered * centered).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
        y = centered * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def cpu_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every `nn.SyncBatchNorm` by `CPUSyncBatchNorm`, in place; return model.

    Why: detectron2 maps norm "SyncBN" (MODEL.RESNETS/FPN.NORM, MODEL.FCOS.NORM, ...) to
    `nn.SyncBatchNorm`, which raises in a multi-process run on CPU ("expected input tensor to be
    on GPU"). detectron2's NaiveSyncBatchNorm would run, but needs affine=True (FCOS/RetinaNet
    Head-BN uses affine=False BNs) and updates the running variance with the biased estimate.
    Call it only for CPU models.
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.SyncBatchNorm):
            continue
        new = CPUSyncBatchNorm(module.num_features, eps=module.eps, momentum=module.momentum,
                               affine=module.affine, track_running_stats=module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model
