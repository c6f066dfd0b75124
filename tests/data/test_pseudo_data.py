"""The data side of semi-supervised training: ids files, the labelled subset, ignore labels in the
cache, and the labelled + pseudo-labelled mix (data.train_ids_file, data.pseudo.*)."""

import pytest
import torch

from maskrcnn.config import load_config
from maskrcnn.data import build_dataset
from maskrcnn.data.pseudo_mix import MixedReader, PseudoDataError, mix_repeats
from maskrcnn.data.splits import labeled_subset, read_ids_file, write_ids_file
from maskrcnn.formats.dataset_cache import CacheDataset, write_cache
from maskrcnn.structures import IGNORE_LABEL, Instances, MaskList, Sample


class ListReader:
    """Samples held in a list, as a reader (``load``, ``image_ids``, ``class_names``, ``strata``)."""

    def __init__(self, samples, class_names=("cell",)):
        self.samples = samples
        self.image_ids = [s.image_id for s in samples]
        self.class_names = tuple(class_names)

    def __len__(self):
        return len(self.samples)

    def strata(self):
        return ["x"] * len(self.samples)

    def load(self, i):
        return self.samples[i]


def _sample(image_id, labels, H=24, W=32):
    dense = torch.zeros((len(labels), H, W), dtype=torch.bool)
    for k in range(len(labels)):  # test set-up only: disjoint 4 x 4 squares
        dense[k, 2:6, 2 + 6 * k: 6 + 6 * k] = True
    masks = MaskList.from_dense(dense)
    inst = Instances((H, W), masks.tight_boxes(), torch.tensor(labels, dtype=torch.long), None, masks)
    image = torch.full((1, H, W), 0.2)
    return Sample(image, inst, image_id, {})


def test_cache_keeps_ignore_labels(tmp_path):
    # Class 1 of two, an ignore region, class 0: the ignore label must not be read as the last class.
    reader = ListReader([_sample("a", [1, IGNORE_LABEL, 0])], class_names=("x", "y"))
    write_cache(reader, str(tmp_path / "p.npz"))
    back = CacheDataset(str(tmp_path / "p.npz")).load(0)
    assert back.instances.labels.tolist() == [1, IGNORE_LABEL, 0]
    assert torch.equal(back.instances.masks.to_dense(), reader.load(0).instances.masks.to_dense())
    # mapped to another class order, the ignore label stays
    remapped = CacheDataset(str(tmp_path / "p.npz"), classes=("y", "x")).load(0)
    assert remapped.instances.labels.tolist() == [0, IGNORE_LABEL, 1]


@pytest.mark.parametrize("L, P, ratio, want", [
    (100, 300, 0.0, (1, 1)),   # off: each image once
    (100, 300, 0.5, (3, 1)),   # 300 / (3 * 100 + 300) = 0.5
    (100, 300, 0.6, (2, 1)),   # 300 * 0.4 / (0.6 * 100) = 2 -> 300 / 500 = 0.6
    (100, 50, 0.5, (1, 2)),    # pseudo repeated: 100 / (100 + 100)
    (133, 398, 0.75, (1, 1)),  # about the natural share already
])
def test_mix_repeats(L, P, ratio, want):
    assert mix_repeats(L, P, ratio) == want


def test_mix_ratio_outside_0_1_is_refused():
    with pytest.raises(PseudoDataError, match="ratio"):
        mix_repeats(10, 10, 1.0)


def test_mixed_reader_repeats_labelled_images_then_lists_the_pseudo_ones():
    lab = ListReader([_sample(f"l{i}", [0]) for i in range(4)])
    pse = ListReader([_sample("p0", [IGNORE_LABEL, 0])])
    mixed = MixedReader(lab, [1, 3], pse, repeats=(2, 1))
    assert mixed.image_ids == ["l1", "l3", "l1", "l3", "p0"]
    assert mixed.strata() == ["labelled"] * 4 + ["pseudo"]
    s = mixed.load(4)
    assert s.meta["pseudo"] is True and s.instances.labels.tolist() == [IGNORE_LABEL, 0]
    assert mixed.load(2).meta["pseudo"] is False


def test_mixed_reader_refuses_other_classes():
    with pytest.raises(PseudoDataError, match="classes"):
        MixedReader(ListReader([_sample("a", [0])], ("cell",)), [0], ListReader([_sample("b", [0])], ("nucleus",)))


def _synthetic_cfg(tmp_path, *extra):
    return load_config(None, [
        "data.format=synthetic", "data.synthetic.num_images=10", "data.synthetic.height=32",
        "data.synthetic.width=40", f"data.split_file={tmp_path / 'folds.json'}", "data.num_folds=5",
        "data.fold=0", *extra]).data


def test_train_ids_file_keeps_only_those_training_images(tmp_path):
    cfg = _synthetic_cfg(tmp_path)
    full = build_dataset(cfg, "train")
    keep = full.image_ids[1::3]
    write_ids_file(str(tmp_path / "ids.json"), keep, note="test")
    assert read_ids_file(str(tmp_path / "ids.json")) == keep
    cfg = _synthetic_cfg(tmp_path, f"data.train_ids_file={tmp_path / 'ids.json'}")
    assert build_dataset(cfg, "train").image_ids == keep
    assert build_dataset(cfg, "val").image_ids == build_dataset(_synthetic_cfg(tmp_path), "val").image_ids
    # an id of the validation fold is an error naming the file
    val_id = build_dataset(cfg, "val").image_ids[0]
    write_ids_file(str(tmp_path / "bad.json"), [val_id])
    with pytest.raises(ValueError, match="bad.json.*not in the training split"):
        build_dataset(_synthetic_cfg(tmp_path, f"data.train_ids_file={tmp_path / 'bad.json'}"), "train")


def test_training_split_mixes_in_the_pseudo_labelled_set(tmp_path):
    cfg = _synthetic_cfg(tmp_path, "data.class_agnostic=true")
    labelled = build_dataset(cfg, "train")
    pse = ListReader([_sample(f"p{i}", [0, IGNORE_LABEL]) for i in range(3)], class_names=("cell",))
    write_cache(pse, str(tmp_path / "pl" / "pseudo_labels.npz"))
    # ratio 0.6: labelled 8 images -> pseudo repeated round(0.6 * 8 / (0.4 * 3)) = 4 times
    cfg = _synthetic_cfg(tmp_path, "data.class_agnostic=true", f"data.pseudo.path={tmp_path / 'pl'}",
                         "data.pseudo.ratio=0.6")
    mixed = build_dataset(cfg, "train", augment=True, seed=3)
    assert len(labelled) == 8 and len(mixed) == 8 + 4 * 3
    assert mixed.image_ids[:8] == labelled.image_ids and mixed.image_ids[8:] == ["p0", "p1", "p2"] * 4
    s = mixed[(0, 8)]
    assert sorted(s.instances.labels.tolist()) == [IGNORE_LABEL, 0]
    assert len(build_dataset(cfg, "val")) == 2  # validation has no pseudo-labels
    with pytest.raises(PseudoDataError, match="no pseudo-labelled dataset"):
        build_dataset(_synthetic_cfg(tmp_path, f"data.pseudo.path={tmp_path / 'nothing'}"), "train")


def test_labeled_subset_is_a_stratified_share_of_the_training_folds():
    folds = {f"i{n:02d}": n % 5 for n in range(40)}       # 8 per fold; fold 0 is validation
    strata = {f"i{n:02d}": "ab"[n % 2] for n in range(40)}
    lab, unl = labeled_subset(folds, strata, 0, 0.25, seed=1)
    train = sorted(i for i, f in folds.items() if f != 0)
    assert sorted(lab + unl) == train and not set(lab) & set(unl)
    assert len(lab) == 8  # 32 training images dealt into 4 parts
    assert sum(strata[i] == "a" for i in lab) == 4  # stratified: half of each stratum's share
    assert labeled_subset(folds, strata, 0, 0.25, seed=1) == (lab, unl)
    assert labeled_subset(folds, strata, 0, 0.25, seed=2) != (lab, unl)
