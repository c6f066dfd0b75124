"""Data: datasets (one per on-disk layout; the files are read by ``maskrcnn.formats``), augmentation,
synthetic cells, splits, loader.

Every reader yields ``maskrcnn.structures.Sample``. Entry points::

    from maskrcnn.data import build_dataset, build_loader
    ds = build_dataset(cfg.data, split="train", augment=True, seed=cfg.train.seed)
    loader = build_loader(ds, cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    loader.set_epoch(epoch)          # (epoch, start_batch=k) to resume mid-epoch
    for batch in loader: ...         # list[Sample]
"""
from maskrcnn.data.loader import EpochSampler, Loader, SampleDataset, build_dataset, build_loader, build_reader

__all__ = ["build_dataset", "build_loader", "build_reader", "SampleDataset", "EpochSampler", "Loader"]
