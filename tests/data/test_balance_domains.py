"""data.balance_domains: training images drawn with weight count(cell type) ** -power."""
from collections import Counter

import pytest
import torch

from maskrcnn.config import ConfigError, load_config
from maskrcnn.data import build_dataset
from maskrcnn.data.loader import EpochSampler, cell_type_weights


class _Reader:
    """Ten images of three cell types: 6 a, 3 b, 1 c."""
    class_names = ("cell",)
    types = ["a"] * 6 + ["b"] * 3 + ["c"]
    image_ids = [f"im{i}" for i in range(10)]

    def __len__(self):
        return 10

    def cell_types(self):
        return list(self.types)


class _Dataset:
    def __init__(self, indices):
        self.reader, self.indices = _Reader(), list(indices)

    def __len__(self):
        return len(self.indices)


def test_weights_are_the_inverse_type_counts_to_the_power():
    w = cell_type_weights(_Dataset(range(10)), 1.0)
    assert w.tolist() == pytest.approx([1 / 6] * 6 + [1 / 3] * 3 + [1.0])
    share = {t: float(w[[i for i, x in enumerate(_Reader.types) if x == t]].sum()) for t in "abc"}
    assert share["a"] == pytest.approx(share["b"]) == pytest.approx(share["c"])  # each type equally often
    half = cell_type_weights(_Dataset(range(10)), 0.5)
    assert half[0].item() == pytest.approx(6 ** -0.5) and half[9].item() == pytest.approx(1.0)
    sub = cell_type_weights(_Dataset([0, 1, 6, 9]), 1.0)  # counted within the training split
    assert sub.tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])


def test_the_sampler_draws_by_the_weights_the_same_way_for_a_seed_and_epoch():
    w = cell_type_weights(_Dataset(range(10)), 1.0)
    s = EpochSampler(10, True, seed=3, weights=w)
    drawn = []
    for epoch in range(300):
        s.set_epoch(epoch)
        keys = list(s)
        assert len(keys) == 10 and all(k[0] == epoch for k in keys)
        drawn += [_Reader.types[p] for _, p in keys]
    c = Counter(drawn)
    for t in "abc":
        assert c[t] / len(drawn) == pytest.approx(1 / 3, abs=0.03)
    s.set_epoch(5)
    again = EpochSampler(10, True, seed=3, weights=w)
    again.set_epoch(5)
    assert list(s) == list(again)
    again.set_epoch(5, start=4)
    assert list(again) == list(s)[4:]  # a resumed epoch continues the same draws
    plain = EpochSampler(10, True, seed=3)
    plain.set_epoch(5)
    assert sorted(p for _, p in plain) == list(range(10))  # off: a permutation, as before


def test_bad_weights_and_a_negative_power_are_refused():
    with pytest.raises(ValueError, match="one value per image"):
        EpochSampler(10, weights=torch.ones(9))
    with pytest.raises(ConfigError, match="data.balance_domains: a power >= 0"):
        load_config(None, ["data.balance_domains=-1"])


def test_a_reader_without_cell_types_is_read_sample_by_sample(tmp_path):
    cfg = load_config(None, ["data.synthetic.num_images=6", "data.synthetic.height=48", "data.synthetic.width=64",
                             "data.synthetic.cells_per_image=[2,5]", f"data.split_file={tmp_path / 's.json'}",
                             "data.num_folds=3", "data.balance_domains=1"]).data
    ds = build_dataset(cfg, "train")
    types = [ds.reader.load(i).meta["cell_type"] for i in ds.indices]
    w = cell_type_weights(ds, 1.0)
    counts = Counter(types)
    assert w.tolist() == pytest.approx([1 / counts[t] for t in types])
