"""A resumable, rank-sharded training order whose randomness depends only on (seed, epoch, index).

Exact resume needs two things from the data pipeline:
1. the order of samples: a permutation drawn from ``(seed, epoch)``, sharded across ranks like
   ``DistributedSampler`` (padded by wrapping around so that every rank gets as many samples),
   which can start part-way through an epoch;
2. the augmentation of each sample: ``SeededDataset`` seeds the global ``random``, ``numpy`` and
   ``torch`` generators from ``(seed, epoch, index)`` around each ``dataset[index]`` call and
   restores them after, so a sample's augmentation does not depend on which worker loads it,
   on the number of workers, or on whether the run was resumed.
"""
from __future__ import annotations

import random
from typing import Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample's augmentation, well mixed from the three integers."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


class ResumableSampler(Sampler):
    """Yields ``(index, sample_seed)`` keys of this rank's share of one epoch.

    Args:
        num_samples: dataset length.
        seed: run seed; the epoch's permutation is drawn from ``(seed, epoch)``.
        rank, world_size: this process's shard (rank ``r`` takes positions ``r, r+W, ...``).
        shuffle: permute (training) or keep the dataset order.
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if num_samples <= 0:
            raise ValueError("the training dataset is empty")
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0
        self.per_rank = (num_samples + world_size - 1) // world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip this rank's first ``start`` samples (a resumed position)."""
        self.epoch = epoch
        self.start = start

    def epoch_indices(self, epoch: int) -> list:
        """This rank's dataset indices for ``epoch``, from its first sample."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        order = (order * ((total + len(order) - 1) // len(order)))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for idx in self.epoch_indices(self.epoch)[self.start :]:
            yield idx, sample_seed(self.seed, self.epoch, idx)

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)


class SeededDataset(Dataset):
    """Wraps a dataset so that ``wrapped[(index, seed)]`` is ``dataset[index]`` drawn under ``seed``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):  # a plain index (e.g. a caller outside the trainer)
            return self.dataset[key]
        index, seed = key
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # CPU only: leave the CUDA generators alone
        try:
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)

    def __getattr__(self, name):  # forward e.g. class names or image ids to the inner dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
