"""A training data stream that a resumed run continues exactly where the killed run stopped.

detectron2's `TrainingSampler` restarts its infinite shuffled stream from the beginning after
`--resume`, so a resumed run sees different batches than an uninterrupted one. Here:

- `ResumableTrainingSampler` produces the same stream (`shuffle(range(n)) + shuffle(range(n)) + ...`
  from one seed, rank r taking positions r, r + W, r + 2W, ...), but can start at a global
  position: after `start_iter` iterations of `total_batch` images, `set_start(start_iter * total_batch)`.
  It yields `(position, index)` pairs; its seed is checkpointed (`state_dict`).
- `PositionSeededDataset` maps `(position, index)` to the model input, with Python's, NumPy's and
  torch's global RNGs seeded from (seed, position) around the mapper call, so random augmentations
  depend on the stream position only, not on worker count or on how many samples a process drew
  before. The caller's RNG states are restored afterwards.

Exact resumption holds when batches are consecutive stream slices: DATALOADER.NUM_WORKERS <= 1, or
ASPECT_RATIO_GROUPING True with one aspect-ratio group (all images wider than tall, or all not
wider, e.g. digits-det), or grouping off and NUM_WORKERS dividing the iteration count.

Example:
    sampler = ResumableTrainingSampler(len(dicts))  # seed shared by all ranks, as detectron2's
    sampler.set_start(start_iter * cfg.SOLVER.IMS_PER_BATCH)
"""
import contextlib
import itertools
import random
from typing import Optional

import numpy as np
import torch
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler


class ResumableTrainingSampler(Sampler):
    """detectron2's TrainingSampler stream of `(position, index)` pairs, startable mid-stream."""

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"ResumableTrainingSampler(size={size!r}): the training set is empty "
                             "(check DATASETS.TRAIN and DATALOADER.FILTER_EMPTY_ANNOTATIONS)")
        self._size = size
        self._shuffle = shuffle
        # None: drawn from NumPy's RNG and broadcast from rank 0, exactly as TrainingSampler does.
        self.seed = int(comm.shared_random_seed() if seed is None or seed < 0 else seed)
        self.start = 0
        self._rank, self._world_size = comm.get_rank(), comm.get_world_size()

    def set_start(self, position: int) -> None:
        """Begin the stream at global `position` (= iterations done * total batch size)."""
        self.start = int(position)

    def __iter__(self):
        first = self.start + self._rank
        positions = itertools.count(first, self._world_size)
        indices = itertools.islice(self._infinite_indices(), first, None, self._world_size)
        yield from zip(positions, indices)

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])


@contextlib.contextmanager
def seeded_global_rngs(seed: int, position: int):
    """Seed random/numpy/torch global RNGs from (seed, position); restore the old states on exit."""
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    sample_seed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, position]).generate_state(1)[0])
    random.seed(sample_seed)
    np.random.seed(sample_seed)
    torch.manual_seed(sample_seed)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


class PositionSeededDataset(Dataset):
    """`dataset[(position, index)]` = `mapper(dicts[index])` with RNGs seeded by position."""

    def __init__(self, dicts, mapper, sampler: ResumableTrainingSampler):
        self._dicts = DatasetFromList(dicts, copy=False)
        self._mapper = mapper
        self._sampler = sampler  # its seed may be replaced by a checkpoint after construction

    def __len__(self):
        return len(self._dicts)

    def __getitem__(self, item):
        position, index = item
        record = self._dicts[index]
        with seeded_global_rngs(self._sampler.seed, position):
            data = self._mapper(record)
        if data is None:
            raise ValueError(f"the training mapper dropped {record.get('file_name')!r}; "
                             "quant_det's resumable loader needs a mapper that keeps every image")
        return data
