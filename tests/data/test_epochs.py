"""Epoch semantics of the loader: each epoch has its own order *and* its own augmentation.

A loader whose shuffle or augmentation seed ignored the epoch would still be deterministic and
resumable (what ``test_loader.py`` checks), yet train on the same views every epoch. The two
effects are checked apart: the order by the image ids alone, the augmentation by the same image's
pixels in two epochs.
"""
import torch
from torch.utils.data import DistributedSampler

from maskrcnn.config import load_config
from maskrcnn.data import build_dataset, build_loader

torch.set_num_threads(1)


def _dataset(tmp_path, augment=True):
    cfg = load_config(None, ["data.synthetic.num_images=12", "data.synthetic.height=48", "data.synthetic.width=48",
                             "data.synthetic.cells_per_image=[2,4]", f"data.split_file={tmp_path / 'split.json'}",
                             "data.num_folds=3", "data.augment.noise_std=0.05", "data.augment.hflip=0.5",
                             "data.augment.vflip=0.5"]).data
    return build_dataset(cfg, "all", augment=augment, seed=3)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(s.image_id, s.image.clone()) for b in loader for s in b]


def test_consecutive_epochs_differ_in_order_and_in_augmentation(tmp_path):
    loader = build_loader(_dataset(tmp_path), batch_size=4, shuffle=True, seed=11)
    epochs = [_epoch(loader, e) for e in range(3)]
    orders = [[i for i, _ in ep] for ep in epochs]
    assert all(sorted(o) == sorted(orders[0]) for o in orders)  # each epoch sees every image once
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    # The same image in two epochs: different noise (and flips), so different pixels, every image.
    for a, b in ((0, 1), (1, 2)):
        pa, pb = dict(epochs[a]), dict(epochs[b])
        assert all(not torch.equal(pa[k], pb[k]) for k in pa)
    # Within one epoch the view of an image is a function of (seed, epoch, image): asked again, the same.
    again = dict(_epoch(loader, 1))
    assert all(torch.equal(again[k], v) for k, v in epochs[1])


def test_epoch_order_is_a_permutation_seeded_by_the_epoch_without_augmentation(tmp_path):
    # Without augmentation the pixels cannot differ; only the order may.
    loader = build_loader(_dataset(tmp_path, augment=False), batch_size=4, shuffle=True, seed=11)
    o = [[i for i, _ in _epoch(loader, e)] for e in range(4)]
    assert len({tuple(x) for x in o}) == 4


def test_a_distributed_shard_changes_order_with_the_epoch(tmp_path):
    ds = _dataset(tmp_path, augment=False)
    sampler = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=3)
    loader = build_loader(ds, 2, sampler=sampler)
    o = [[i for i, _ in _epoch(loader, e)] for e in range(3)]
    assert len({tuple(x) for x in o}) == 3
