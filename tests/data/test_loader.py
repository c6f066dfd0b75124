import json
from collections import Counter

import pytest
import torch
from torch.utils.data import DistributedSampler

from maskrcnn.config import ConfigError, load_config
from maskrcnn.data import build_dataset, build_loader
from maskrcnn.data.splits import make_folds
from maskrcnn.structures import Sample


def _cfg(tmp_path, *extra):
    return load_config(None, ["data.synthetic.num_images=12", "data.synthetic.height=48", "data.synthetic.width=64",
                              "data.synthetic.cells_per_image=[2,5]", f"data.split_file={tmp_path / 'split.json'}",
                              "data.num_folds=3", *extra]).data


def test_make_folds_is_stratified_balanced_and_order_independent():
    ids = [f"im{i}" for i in range(30)]
    strata = ["a"] * 12 + ["b"] * 9 + ["c"] * 9
    folds = make_folds(ids, strata, 3, seed=0)
    assert sorted(Counter(folds.values()).values()) == [10, 10, 10]
    for s in "abc":
        per = Counter(folds[i] for i, t in zip(ids, strata) if t == s)
        assert max(per.values()) - min(per.values()) <= 1
    rev = make_folds(ids[::-1], strata[::-1], 3, seed=0)
    assert rev == folds
    assert make_folds(ids, strata, 3, seed=1) != folds
    with pytest.raises(ValueError, match="duplicate image ids"):
        make_folds(["x", "x"], ["a", "a"], 2)


def test_splits_are_disjoint_written_once_and_reused(tmp_path):
    cfg = _cfg(tmp_path)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert set(train.image_ids).isdisjoint(val.image_ids)
    assert len(train) + len(val) == 12 and len(build_dataset(cfg, "all")) == 12
    doc = json.loads((tmp_path / "split.json").read_text())
    assert doc["num_folds"] == 3 and len(doc["folds"]) == 12
    # The file is the source of truth: edit it and the split follows.
    moved = train.image_ids[0]
    doc["folds"][moved] = 0
    (tmp_path / "split.json").write_text(json.dumps(doc))
    assert moved in build_dataset(cfg, "val").image_ids
    with pytest.raises(ValueError, match="holds 3 folds but the config asks for 4"):
        build_dataset(_cfg(tmp_path, "data.num_folds=4"), "train")
    with pytest.raises(ValueError, match="lacks 4 of the dataset's 16 images"):
        build_dataset(_cfg(tmp_path, "data.synthetic.num_images=16"), "train")
    with pytest.raises(ValueError, match=r"data.fold=5 is outside \[0, 3\)"):
        build_dataset(_cfg(tmp_path, "data.fold=5"), "val")


def test_fold_minus_one_trains_on_every_image_and_holds_none_back(tmp_path):
    cfg = _cfg(tmp_path, "data.fold=-1")
    train = build_dataset(cfg, "train")
    assert sorted(train.image_ids) == sorted(build_dataset(cfg, "all").image_ids) and len(train) == 12
    assert len(build_dataset(cfg, "val")) == 0
    with pytest.raises(ValueError, match=r"data.fold=-2 is outside"):
        build_dataset(_cfg(tmp_path, "data.fold=-2"), "train")


def _keys(loader):
    return [[(s.image_id, float(s.image.sum()), len(s.instances)) for s in b] for b in loader]


def test_loader_batches_lists_and_is_deterministic_and_resumable(tmp_path):
    cfg = _cfg(tmp_path, "data.augment.rotate_prob=0.5", "data.augment.rotate_degrees=10",
               "data.augment.scale_range=[0.8,1.2]", "data.augment.copy_paste_prob=0.5", "data.augment.noise_std=0.02")
    ds = build_dataset(cfg, "all", augment=True, seed=5)
    loader = build_loader(ds, batch_size=3, shuffle=True, num_workers=0, seed=11)
    assert len(loader) == 4
    loader.set_epoch(0)
    e0 = _keys(loader)
    batch = next(iter(loader))
    assert isinstance(batch, list) and all(isinstance(s, Sample) for s in batch)
    assert len({tuple(s.image.shape) for b in loader for s in b}) > 1  # scale jitter: sizes differ
    loader.set_epoch(1)
    e1 = _keys(loader)
    assert e0 != e1 and sorted(x[0] for b in e0 for x in b) == sorted(x[0] for b in e1 for x in b)
    loader.set_epoch(1, start_batch=2)
    assert _keys(loader) == e1[2:]
    again = build_loader(ds, batch_size=3, shuffle=True, num_workers=2, seed=11)
    again.set_epoch(1)
    assert _keys(again) == e1  # the same with worker processes


def test_loader_accepts_a_distributed_sampler(tmp_path):
    ds = build_dataset(_cfg(tmp_path), "all")
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = build_loader(ds, 2, sampler=sampler)
        loader.set_epoch(4)
        assert sampler.epoch == 4
        seen.append([s.image_id for b in loader for s in b])
    assert set(seen[0]).isdisjoint(seen[1]) and len(seen[0]) + len(seen[1]) == 12


def test_unaugmented_dataset_returns_reader_samples(tmp_path):
    cfg = _cfg(tmp_path)
    ds = build_dataset(cfg, "val")
    s = ds[0]
    ref = ds.reader.load(ds.indices[0])
    assert torch.equal(s.image, ref.image) and torch.equal(s.instances.boxes, ref.instances.boxes)
    assert ds[(3, 0)].image_id == s.image_id
    with pytest.raises(ValueError, match="unknown data.format 'nope'"):
        build_dataset(load_config(None, ["data.format=nope"]).data)


def test_cache_file_is_written_on_first_use_then_read(tmp_path, capsys):
    cfg = _cfg(tmp_path, f"data.cache_file={tmp_path / 'c' / 'cells.npz'}")
    first = build_dataset(cfg, "all")
    assert (tmp_path / "c" / "cells.npz").is_file() and "writing the dataset cache" in capsys.readouterr().out
    assert type(first.reader).__name__ == "CacheDataset"
    plain = build_dataset(_cfg(tmp_path), "all")
    again = build_dataset(cfg, "all")
    assert "writing" not in capsys.readouterr().out
    for k in (0, 5):
        assert torch.equal(again[k].image, plain[k].image)
        assert torch.equal(again[k].instances.masks.to_dense(), plain[k].instances.masks.to_dense())
    # The folds are the source's: same split with or without the cache.
    assert build_dataset(cfg, "val").image_ids == build_dataset(_cfg(tmp_path), "val").image_ids
    # A cache made from another dataset is refused, not silently used.
    other = _cfg(tmp_path, f"data.cache_file={tmp_path / 'c' / 'cells.npz'}", "data.synthetic.num_images=13")
    with pytest.raises(ConfigError, match=r"cache holds 12 images that differ from the 13 .*cells.npz\)$"):
        build_dataset(other, "all")
