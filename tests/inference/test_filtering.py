import dataclasses

import pytest
import torch

from maskrcnn.config import TestConfig as Cfg
from maskrcnn.inference.filtering import fill_holes, image_class, mask_confidence, filter_predictions
from maskrcnn.structures import Instances, MaskList


def _inst(dense, scores, labels=None, pad=1):
    dense = torch.as_tensor(dense)
    ml = MaskList.from_dense(dense, pad=pad)
    n = dense.shape[0]
    labels = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels)
    return Instances(tuple(dense.shape[1:]), ml.tight_boxes(), labels, torch.as_tensor(scores, dtype=torch.float32), ml)


def _cfg(**kw):
    base = dict(score_thresh=(0.0,), mask_thresh=(0.5,), min_area=(0,), image_class="none")
    base.update(kw)
    return Cfg(**base)


def test_overlaps_go_to_the_best_score_and_losers_are_dropped_then_repainted():
    H, W = 30, 30
    d = torch.zeros((3, H, W))
    d[0, 0:10, 0:10] = 0.9           # A: 100 px, best score
    d[1, 0:10, 4:14] = 0.9           # B: 100 px, 60 under A -> keeps 40% < 50%: dropped
    d[2, 0:10, 11:21] = 0.9          # C: 100 px, 30 under B; B is gone, so C keeps all
    out = filter_predictions(_inst(d, [0.9, 0.8, 0.7]), _cfg(overlap_min_keep=0.5))
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])
    dense = out.masks.to_dense()
    assert torch.equal(dense[0], d[0] > 0)
    assert torch.equal(dense[1], d[2] > 0)
    assert out.masks.crops.dtype == torch.bool
    assert torch.equal(out.boxes, torch.tensor([[0.0, 0, 10, 10], [11, 0, 21, 10]]))
    # keeping 40% is enough at overlap_min_keep=0.4: B keeps columns 10..13, C loses columns 11..13
    out = filter_predictions(_inst(d, [0.9, 0.8, 0.7]), _cfg(overlap_min_keep=0.4))
    areas = out.masks.areas().tolist()
    assert areas == [100, 40, 70]
    # without overlap removal masks are kept whole
    out = filter_predictions(_inst(d, [0.9, 0.8, 0.7]), _cfg(remove_overlaps=False))
    assert out.masks.areas().tolist() == [100, 100, 100]


def test_random_overlaps_leave_no_pixel_twice_and_respect_ranks():
    g = torch.Generator().manual_seed(0)
    n, H, W = 40, 50, 60
    d = torch.zeros((n, H, W))
    for k in range(n):  # test set-up
        y, x = torch.randint(0, H - 8, (2,), generator=g).tolist()[0], torch.randint(0, W - 8, (1,), generator=g).item()
        d[k, y:y + 8 + k % 5, x:x + 6 + k % 7] = torch.rand(1, generator=g).item() * 0.5 + 0.5
    scores = torch.rand(n, generator=g)
    # one_piece off: this checks overlap removal alone (its fraction counts all of a mask's pieces)
    out = filter_predictions(_inst(d, scores), _cfg(overlap_min_keep=0.3, min_area=(5,), one_piece=False))
    dense = out.masks.to_dense()
    assert dense.sum(0).max() <= 1
    assert (dense.flatten(1).sum(1) >= 5).all()
    # every kept mask lies within its input mask and keeps at least 30% of it
    src = [int(torch.nonzero(scores == s)[0]) for s in out.scores]
    for k, i in enumerate(src):
        assert not (dense[k] & ~(d[i] >= 0.5)).any()
        assert dense[k].sum() >= 0.3 * (d[i] >= 0.5).sum()
    # a pixel of a kept mask is not in any better-scored kept input mask
    inputs = torch.stack([d[i] >= 0.5 for i in src])
    for k in range(1, len(src)):
        assert not (dense[k] & inputs[:k].any(0)).any()


def test_per_class_score_mask_thresholds_and_min_area():
    H, W = 40, 40
    d = torch.zeros((6, H, W))
    for k in range(6):
        d[k, 6 * k:6 * k + 5, 0:10] = 0.6  # 50 px each, disjoint
    d[5, 6 * 5:6 * 5 + 5, 0:2] = 0.9
    labels = [0, 0, 1, 1, 2, 2]
    scores = [0.35, 0.25, 0.6, 0.45, 0.9, 0.8]
    cfg = _cfg(score_thresh=(0.3, 0.5, 0.7), mask_thresh=(0.5, 0.5, 0.7), min_area=(0, 0, 20))
    out = filter_predictions(_inst(d, scores, labels), cfg)
    # class 0 keeps 0.35, class 1 keeps 0.6, class 2: both pass the score but mask threshold 0.7
    # leaves only instance 5's 10-pixel strip, under class 2's min area of 20.
    assert out.scores.tolist() == pytest.approx([0.6, 0.35])
    assert out.labels.tolist() == [1, 0]
    out = filter_predictions(_inst(d, scores, labels), dataclasses.replace(cfg, min_area=(0, 0, 10)))
    assert out.scores.tolist() == pytest.approx([0.8, 0.6, 0.35])
    assert out.masks.areas().tolist() == [10, 50, 50]
    with pytest.raises(ValueError, match="test.score_thresh has 2 values .* class 2"):
        filter_predictions(_inst(d, scores, labels), dataclasses.replace(cfg, score_thresh=(0.3, 0.5)))


def test_image_class_is_the_most_frequent_label():
    H, W = 40, 40
    d = torch.zeros((5, H, W))
    for k in range(5):
        d[k, 7 * k:7 * k + 5, 0:10] = 0.9  # 50 px each
    labels = [2, 1, 1, 2, 1]  # class 1 is the majority among passing instances
    scores = [0.95, 0.5, 0.45, 0.9, 0.42]
    cfg = _cfg(score_thresh=(0.1, 0.4, 0.1), min_area=(0, 0, 60), image_class="relabel")
    out = filter_predictions(_inst(d, scores, labels), cfg)
    # relabel: everything becomes class 1 and is judged by class 1's thresholds (score 0.4, min area 0)
    assert out.labels.tolist() == [1, 1, 1, 1, 1]
    assert out.scores.tolist() == pytest.approx([0.95, 0.9, 0.5, 0.45, 0.42])
    out = filter_predictions(_inst(d, scores, labels), dataclasses.replace(cfg, image_class="filter"))
    assert out.labels.tolist() == [1, 1, 1] and out.scores.tolist() == pytest.approx([0.5, 0.45, 0.42])
    # none: each instance keeps its class; class 2's min area of 60 drops both class-2 instances
    out = filter_predictions(_inst(d, scores, labels), dataclasses.replace(cfg, image_class="none"))
    assert out.labels.tolist() == [1, 1, 1]
    # 0.2 fails class 1's score threshold: 2 passing each, and class 2's larger score sum wins;
    # relabelled to class 2, all are under its min area
    scores[4] = 0.2
    assert len(filter_predictions(_inst(d, scores, labels), cfg)) == 0
    out = filter_predictions(_inst(d, scores, labels), dataclasses.replace(cfg, min_area=(0,)))
    assert out.labels.tolist() == [2] * 5


def test_image_class_counts_instances_passing_their_own_class_threshold():
    d = torch.zeros((4, 8, 8))
    d[:, 0:4, 0:4] = 0.9
    inst = _inst(d, [0.9, 0.2, 0.3, 0.25], labels=[0, 1, 1, 1])
    assert image_class(inst, (0.5, 0.5)) == 0  # only class 0 passes its threshold
    assert image_class(inst, (0.5, 0.1)) == 1  # now three of class 1 pass
    assert image_class(inst[[]], (0.5,)) == -1


def test_fill_holes_fills_enclosed_background_only():
    crops = torch.zeros((3, 9, 9), dtype=torch.bool)
    crops[0, 1:8, 1:8] = True
    crops[0, 3:6, 3:6] = False       # a 3x3 hole
    crops[1] = crops[0]
    crops[1, 4, 1] = False           # an opening to the outside: not a hole
    crops[1, 4, 2] = False
    crops[2, 0:9, 0:9] = True
    crops[2, 4, 4] = False           # touching the crop's border everywhere but holed
    filled = fill_holes(crops)
    assert filled[0, 1:8, 1:8].all() and filled[0].sum() == 49
    assert torch.equal(filled[1], crops[1])
    assert filled[2].all()
    d = torch.zeros((1, 12, 12))
    d[0, 1:10, 1:10] = 0.9
    d[0, 4:6, 4:6] = 0.1
    out = filter_predictions(_inst(d, [0.9]), _cfg(fill_holes=True))
    assert out.masks.areas().tolist() == [81]


def test_empty_inputs_and_everything_filtered():
    empty = Instances.empty((10, 10), with_scores=True, with_masks=True)
    assert len(filter_predictions(empty, Cfg())) == 0
    d = torch.zeros((1, 10, 10))
    d[0, 2:5, 2:5] = 0.9
    out = filter_predictions(_inst(d, [0.1]), Cfg())
    assert len(out) == 0 and out.masks is not None


def test_mask_confidence_is_the_mean_probability_inside_the_binarised_mask():
    crops = torch.zeros((3, 2, 3))
    crops[0] = torch.tensor([[0.9, 0.7, 0.4], [0.2, 0.0, 0.5]])  # >= 0.5: 0.9, 0.7, 0.5 -> mean 0.7
    crops[1] = torch.tensor([[0.6, 0.6, 0.6], [0.3, 0.3, 0.3]])  # >= 0.6 (its own threshold): 0.6
    crops[2] = 0.4                                              # nothing >= 0.5: 0
    conf = mask_confidence(crops, torch.tensor([0.5, 0.6, 0.5]))
    assert conf.tolist() == pytest.approx([0.7, 0.6, 0.0])


def test_mask_rescore_changes_the_score_threshold_and_the_overlap_priority():
    H, W = 20, 20
    d = torch.zeros((2, H, W))
    d[0, 0:10, 0:10] = 0.55          # A: confident box (0.9), unsure mask: 0.9 * 0.55 = 0.495
    d[0, 10:12, 0:10] = 0.3          # below the mask threshold: not part of A's mean
    d[1, 0:10, 4:14] = 1.0           # B: 0.6 * 1.0 = 0.6; shares 60 of its 100 px with A
    # Without rescoring A ranks first and takes the shared pixels; B keeps 40% < 50%: dropped.
    out = filter_predictions(_inst(d, [0.9, 0.6]), _cfg(overlap_min_keep=0.5))
    assert out.scores.tolist() == pytest.approx([0.9])
    assert out.masks.areas().tolist() == [100]
    # Rescored, B ranks first and A is the one dropped; the output carries the rescored score.
    out = filter_predictions(_inst(d, [0.9, 0.6]), _cfg(overlap_min_keep=0.5, mask_rescore=True))
    assert out.scores.tolist() == pytest.approx([0.6])
    assert torch.equal(out.masks.to_dense()[0], d[1] > 0.5)
    # Disjoint masks: a score threshold of 0.5 keeps A (0.9) unrescored, drops it (0.495) rescored.
    d[1] = 0
    d[1, 12:20, 12:20] = 1.0
    assert filter_predictions(_inst(d, [0.9, 0.6]), _cfg(score_thresh=(0.5,))).scores.tolist() == pytest.approx([0.9, 0.6])
    out = filter_predictions(_inst(d, [0.9, 0.6]), _cfg(score_thresh=(0.5,), mask_rescore=True))
    assert out.scores.tolist() == pytest.approx([0.6])
    out = filter_predictions(_inst(d, [0.9, 0.6]), _cfg(score_thresh=(0.4,), mask_rescore=True))
    assert out.scores.tolist() == pytest.approx([0.6, 0.495])


def test_mask_rescore_needs_soft_masks():
    d = torch.zeros((1, 10, 10), dtype=torch.bool)
    d[0, 2:6, 2:6] = True
    with pytest.raises(ValueError, match="mask_rescore needs soft masks"):
        filter_predictions(_inst(d, [0.9]), _cfg(mask_rescore=True))
    assert len(filter_predictions(_inst(d, [0.9]), _cfg())) == 1
