"""Datasets of ``Sample`` and a deterministic, resumable loader.

- ``build_dataset(cfg.data, split)`` picks the reader for ``cfg.data.format`` (a plain ``if``),
  selects the split's images from the fold file, and optionally augments.
- ``build_loader(dataset, ...)`` batches ``list[Sample]`` (images of different sizes are fine).

Determinism: the sampler yields ``(epoch, position)`` keys. The order of an epoch is a permutation
seeded by ``(seed, epoch)``; the augmentation of an image is seeded by ``(seed, epoch, image index)``;
copy-paste by the keys of its batch. Nothing depends on worker count, worker assignment or
earlier epochs, so ``loader.set_epoch(e, start_batch=b)`` resumes exactly where a run stopped.
"""
from __future__ import annotations

import hashlib
import random
import struct
from collections import Counter
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from maskrcnn.structures import Sample


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (stable across runs, platforms and Python hash seeds)."""
    h = hashlib.blake2b(struct.pack(f"<{len(values)}q", *[int(v) for v in values]), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


class SampleDataset(Dataset):
    """The images ``indices`` of ``reader``, optionally augmented.

    ``dataset[i]`` or ``dataset[(epoch, i)]`` (what the loader's sampler yields) -> ``Sample``.
    The reader needs ``load(index) -> Sample``, ``image_ids`` and ``class_names``.

    Attributes:
        reader: the format reader (``SyntheticCells``, ``SartoriusDataset``, ...).
        indices (list[int]): reader indices of this split.
        transform: per-sample transform ``(Sample, torch.Generator) -> Sample`` or None.
        batch_transform: ``(list[Sample], torch.Generator) -> list[Sample]`` (copy-paste) or None.
        seed (int): augmentation seed.
    """

    def __init__(self, reader, indices: Optional[Sequence[int]] = None, transform=None, batch_transform=None,
                 seed: int = 0):
        self.reader = reader
        self.indices = list(range(len(reader))) if indices is None else [int(i) for i in indices]
        self.transform = transform
        self.batch_transform = batch_transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def class_names(self) -> tuple:
        return tuple(self.reader.class_names)

    @property
    def image_ids(self) -> List[str]:
        ids = self.reader.image_ids
        return [ids[i] for i in self.indices]

    def __getitem__(self, key) -> Sample:
        if isinstance(key, tuple):
            epoch, pos = int(key[0]), int(key[1])
        else:
            epoch, pos = 0, int(key)
        if not -len(self.indices) <= pos < len(self.indices):
            raise IndexError(f"dataset index {pos} out of range for {len(self.indices)} images")
        index = self.indices[pos]
        sample = self.reader.load(index)
        if self.transform is not None:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
            sample = self.transform(sample, g)
        sample.meta["aug_key"] = (epoch, index)
        return sample


# ---------------------------------------------------------------------- sampling
class EpochSampler(Sampler):
    """Yields ``(epoch, position)`` keys.

    Without ``inner``: positions ``0..n-1``, shuffled by a permutation seeded with ``(seed, epoch)``.
    With ``inner`` (e.g. a ``DistributedSampler``): its positions, with its ``set_epoch`` called too.
    ``set_epoch(epoch, start=k)`` skips the epoch's first ``k`` keys (exact mid-epoch resume).
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, inner: Optional[Sampler] = None,
                 weights: Optional[torch.Tensor] = None):
        self.n = int(n)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.inner = inner
        if weights is not None and (inner is not None or len(weights) != self.n):
            raise ValueError(f"sampling weights need one value per image ({self.n}) and no inner sampler")
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = int(epoch)
        self.start = int(start)
        if self.inner is not None and hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(self.epoch)

    def _positions(self) -> List[int]:
        if self.inner is not None:
            return [int(i) for i in self.inner]
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0x5A))
        if self.weights is not None:  # n draws with replacement: an epoch is still n images
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        for p in self._positions()[self.start:]:
            yield (self.epoch, p)

    def __len__(self) -> int:
        total = len(self.inner) if self.inner is not None else self.n
        return max(0, total - self.start)


def _collate(batch_transform, seed: int):
    def collate(samples: List[Sample]) -> List[Sample]:
        if batch_transform is None or not samples:
            return list(samples)
        keys = [v for s in samples for v in s.meta.get("aug_key", (0, 0))]
        g = torch.Generator().manual_seed(mix_seed(seed, 0xC0, *keys))
        return batch_transform(list(samples), g)

    return collate


def _seed_worker(worker_id: int) -> None:
    # Augmentation draws from explicit generators; seed the global ones anyway for any library
    # code that uses them, and keep each worker to one thread (the machine is shared).
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
    torch.set_num_threads(1)


class Loader:
    """A ``DataLoader`` over ``(epoch, position)`` keys with ``set_epoch``; batches are ``list[Sample]``."""

    def __init__(self, dataset: SampleDataset, batch_size: int, sampler: EpochSampler, num_workers: int,
                 drop_last: bool, seed: int):
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.batch_sampler = BatchSampler(sampler, self.batch_size, drop_last)
        self._loader = DataLoader(
            dataset, batch_sampler=self.batch_sampler, num_workers=int(num_workers),
            collate_fn=_collate(getattr(dataset, "batch_transform", None), getattr(dataset, "seed", seed)),
            worker_init_fn=_seed_worker if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(seed), persistent_workers=False,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its shuffle and augmentation) and skip its first ``start_batch`` batches."""
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)

    def __iter__(self):
        return iter(self._loader)

    def __len__(self) -> int:
        return len(self.batch_sampler)


def cell_type_weights(dataset: SampleDataset, power: float) -> torch.Tensor:
    """Sampling weight ``count(cell type) ** -power`` of each image of ``dataset`` (its reader's
    ``cell_types()`` when it has one, e.g. the dataset cache, else each sample's ``meta["cell_type"]``;
    images without one form one group)."""
    fn = getattr(dataset.reader, "cell_types", None)
    if fn is not None:
        every = fn()
        types = [every[i] for i in dataset.indices]
    else:
        types = [dataset.reader.load(i).meta.get("cell_type") for i in dataset.indices]  # a loop over images
    counts = Counter(types)
    return torch.tensor([counts[t] ** -float(power) for t in types], dtype=torch.float64)


def build_loader(dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                 sampler: Optional[Sampler] = None, seed: int = 0, drop_last: bool = False,
                 weights: Optional[torch.Tensor] = None) -> Loader:
    """Batches of ``list[Sample]`` from ``dataset``.

    Args:
        dataset: a ``SampleDataset`` (``build_dataset``); any dataset accepting ``(epoch, i)`` keys.
        batch_size: images per batch (per process under distributed training).
        shuffle: shuffle each epoch (seeded by ``(seed, epoch)``); ignored when ``sampler`` is given.
        num_workers: loader worker processes (0: load in the main process).
        sampler: e.g. ``torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=seed)``;
            its positions are used and its ``set_epoch`` is called by ``loader.set_epoch``.
        seed: order seed (the augmentation seed is the dataset's own ``seed``).
        drop_last: drop a last incomplete batch.
        weights: per image, its sampling weight (``cell_type_weights``): each epoch draws
            ``len(dataset)`` images with replacement instead of a permutation.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    es = EpochSampler(len(dataset), shuffle, seed, inner=sampler, weights=weights)
    return Loader(dataset, batch_size, es, num_workers, drop_last, seed)


# ------------------------------------------------------------------- datasets
def build_reader(cfg):
    """The reader of ``cfg.format`` (a ``DataConfig``), unsplit and unaugmented.

    With ``cfg.cache_file`` set (and a format other than ``cache``) the source is read once into
    that ``.npz`` cache, which is then read instead; a cache whose image ids differ from the
    source's is an error (delete the file to rebuild it).
    """
    fmt = cfg.format
    if cfg.cache_file and fmt != "cache":
        return _cached_reader(cfg)
    if fmt == "synthetic":
        from maskrcnn.data.synthetic import SyntheticCells

        s = cfg.synthetic
        return SyntheticCells(s.num_images, s.height, s.width, tuple(s.cells_per_image), s.seed,
                              cfg.class_agnostic, tuple(cfg.classes))
    if fmt == "sartorius":
        from maskrcnn.data.sartorius import SartoriusDataset

        return SartoriusDataset(cfg.root, ann_file=cfg.ann_file, class_agnostic=cfg.class_agnostic,
                                classes=tuple(cfg.classes))
    if fmt == "sartorius_unlabeled":
        from maskrcnn.data.sartorius import SartoriusUnlabeled

        return SartoriusUnlabeled(cfg.root, class_agnostic=cfg.class_agnostic, classes=tuple(cfg.classes))
    if fmt == "coco":
        from maskrcnn.data.coco_dataset import CocoDataset

        return CocoDataset(cfg.ann_file, cfg.root, class_agnostic=cfg.class_agnostic, classes=tuple(cfg.classes))
    if fmt == "dsb2018":
        from maskrcnn.data.dsb2018 import DSB2018Dataset

        return DSB2018Dataset(cfg.root, class_agnostic=cfg.class_agnostic, classes=tuple(cfg.classes))
    if fmt == "label_folders":
        from maskrcnn.data.label_folders import LabelFolderDataset

        return LabelFolderDataset(cfg.root, class_agnostic=cfg.class_agnostic, classes=tuple(cfg.classes))
    if fmt == "cache":
        from maskrcnn.formats.dataset_cache import CacheDataset

        return CacheDataset(cfg.root, class_agnostic=cfg.class_agnostic, classes=tuple(cfg.classes))
    raise ValueError(f"unknown data.format {fmt!r}")  # DataConfig refuses it when built (maskrcnn.config)


def _cached_reader(cfg):
    import dataclasses
    import os

    from maskrcnn.formats.dataset_cache import CacheDataset, write_cache

    source = build_reader(dataclasses.replace(cfg, cache_file=""))
    path = cfg.cache_file
    if not os.path.isfile(path):
        print(f"writing the dataset cache {path} from {cfg.root or cfg.format} (once)", flush=True)
        write_cache(source, path, progress=True)
    reader = CacheDataset(path, class_agnostic=cfg.class_agnostic, classes=tuple(cfg.classes))
    if list(reader.image_ids) != list(source.image_ids):
        from maskrcnn.config import ConfigError

        raise ConfigError(f"the dataset cache holds {len(reader.image_ids)} images that differ from the "
                          f"{len(source.image_ids)} of data.root {cfg.root!r}; delete it to rebuild it "
                          f"(data.cache_file {path})")
    return reader


def build_dataset(cfg, split: str = "train", augment: bool = False, seed: int = 0, reader=None) -> SampleDataset:
    """A ``SampleDataset`` of ``split`` (``train`` | ``val`` | ``all``) for a ``DataConfig``.

    The folds come from ``cfg.split_file`` (made there on first use, stratified by the reader's
    ``strata()``; kept in memory when the path is empty). ``augment=True`` applies
    ``build_transforms(cfg.augment)`` per sample and copy-paste per batch (via ``build_loader``).
    ``reader`` reuses an already built reader (e.g. for train and val of one dataset).
    The training split keeps only the ids of ``cfg.train_ids_file`` when it is set, and adds the
    pseudo-labelled images of ``cfg.pseudo.path`` (``maskrcnn.data.pseudo_mix``) when that is set.
    """
    from maskrcnn.data.splits import load_or_make_folds, read_ids_file, restrict_to_ids, split_indices
    from maskrcnn.data.transforms.pipeline import build_batch_transform, build_transforms

    reader = build_reader(cfg) if reader is None else reader
    if split == "all":
        indices = list(range(len(reader)))
    else:
        ids = list(reader.image_ids)
        folds = load_or_make_folds(cfg.split_file, ids, reader.strata, cfg.num_folds)
        indices = split_indices(folds, ids, split, cfg.fold, cfg.num_folds)
        if split == "train" and cfg.train_ids_file:
            indices = restrict_to_ids(indices, ids, read_ids_file(cfg.train_ids_file), cfg.train_ids_file)
    if split == "train" and cfg.pseudo.path:
        from maskrcnn.data.pseudo_mix import build_mixed_reader

        reader = build_mixed_reader(reader, indices, cfg.pseudo, cfg.class_agnostic)
        indices = None  # every image of the mix
    transform = build_transforms(cfg.augment) if augment else None
    batch_transform = build_batch_transform(cfg.augment) if augment else None
    return SampleDataset(reader, indices, transform, batch_transform, seed)
