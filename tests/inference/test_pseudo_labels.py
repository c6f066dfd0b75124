"""Pseudo-labels from merged predictions: the keep / ignore thresholds, view agreement, duplicates
of cells, and the view counts the merge reports."""
import pytest
import torch

from maskrcnn.config import TestConfig as Cfg
from maskrcnn.inference.merge import merge_instances
from maskrcnn.inference.pseudo_selection import check_thresholds, pseudo_labels
from maskrcnn.structures import IGNORE_LABEL, Instances, MaskList

H, W = 40, 60


def _squares(corners, scores, soft=0.9):
    """Instances of 6 x 6 squares at ``corners`` ((x0, y0) each) with soft value ``soft``."""
    dense = torch.zeros((len(corners), H, W))
    for k, (x, y) in enumerate(corners):  # test set-up only
        dense[k, y:y + 6, x:x + 6] = soft
    ml = MaskList.from_dense(dense)
    return Instances((H, W), ml.tight_boxes(), torch.zeros(len(corners), dtype=torch.long),
                     torch.tensor(scores, dtype=torch.float32), ml)


CORNERS = [(2, 2), (12, 2), (22, 2), (32, 2), (42, 2)]


def _origin_of(inst):
    return [tuple(b[:2]) for b in inst.boxes.long().tolist()]


def test_cells_ignore_regions_and_background_by_score_and_agreement():
    # keep 0.7, ignore 0.3, agree 2 (of 2 views):
    #   0: 0.9 in 2 views -> cell        1: 0.6 in 2 views -> ignore (below keep)
    #   2: 0.2 -> background             3: 0.8 in 1 view -> ignore (views disagree)
    #   4: exactly 0.7 in 2 views -> cell (>= keep)
    merged = _squares(CORNERS, [0.9, 0.6, 0.2, 0.8, 0.7])
    counts = torch.tensor([2, 2, 2, 1, 2])
    out, c = pseudo_labels(merged, counts, Cfg(), keep=0.7, ignore=0.3, agree=2)
    assert c == {"cells": 2, "ignored": 2, "background": 1}
    cells = out.labels == 0
    assert sorted(_origin_of(out[torch.nonzero(cells).squeeze(1)])) == [(2, 2), (42, 2)]
    assert sorted(_origin_of(out[torch.nonzero(out.labels == IGNORE_LABEL).squeeze(1)])) == [(12, 2), (32, 2)]
    assert out.masks.crops.dtype == torch.bool and int(out.masks.crops.sum()) == 4 * 36
    # with agree 1 the disagreeing 0.8 becomes a cell
    out, c = pseudo_labels(merged, counts, Cfg(), keep=0.7, ignore=0.3, agree=1)
    assert c == {"cells": 3, "ignored": 1, "background": 1}


def test_an_uncertain_duplicate_of_a_cell_is_not_an_ignore_region():
    # 1 overlaps cell 0 by 5 of its 6 columns (30 of 36 pixels > max_covered 0.5): a duplicate;
    # 2 overlaps it by 2 columns (12 of 36): an ignore region of its own.
    merged = _squares([(2, 2), (3, 2), (6, 2)], [0.9, 0.5, 0.5])
    out, c = pseudo_labels(merged, torch.tensor([1, 1, 1]), Cfg(), keep=0.7, ignore=0.3, agree=1)
    assert c == {"cells": 1, "ignored": 1, "background": 1}
    assert _origin_of(out) == [(2, 2), (6, 2)] and out.labels.tolist() == [0, IGNORE_LABEL]


def test_mask_threshold_and_min_area_apply_to_the_cells():
    merged = _squares([(2, 2), (12, 2)], [0.9, 0.9], soft=0.4)  # soft masks below test.mask_thresh 0.5
    out, c = pseudo_labels(merged, torch.tensor([1, 1]), Cfg(), keep=0.7, ignore=0.3)
    assert c["cells"] == 0 and len(out) == 0
    merged = _squares([(2, 2)], [0.9])
    out, _ = pseudo_labels(merged, torch.tensor([1]), Cfg(min_area=(37,)), keep=0.7, ignore=0.3)
    assert len(out) == 0  # 36 pixels < min_area 37


@pytest.mark.parametrize("keep, ignore, agree, match", [
    (1.5, 0.3, 1, "keep"), (0.5, 0.6, 1, "ignore"), (0.5, -0.1, 1, "ignore"), (0.7, 0.3, 3, "agree"),
])
def test_bad_thresholds_are_refused(keep, ignore, agree, match):
    with pytest.raises(ValueError, match=match):
        check_thresholds(keep, ignore, agree, num_views=2)


def test_merge_reports_how_many_views_saw_each_object():
    a = _squares([(2, 2), (22, 2)], [0.9, 0.8])
    b = _squares([(2, 2), (42, 2)], [0.7, 0.6])
    merged, counts = merge_instances([a, b], 0.5, 1, 0.5, return_view_counts=True)
    # fused scores: (0.9 + 0.7) / 2 = 0.8 (both views), 0.8 / 2 = 0.4, 0.6 / 2 = 0.3
    torch.testing.assert_close(merged.scores, torch.tensor([0.8, 0.4, 0.3]))
    assert counts.tolist() == [2, 1, 1]
    assert _origin_of(merged) == [(2, 2), (22, 2), (42, 2)]
    # without the flag: the same instances
    plain = merge_instances([a, b], 0.5, 1, 0.5)
    torch.testing.assert_close(plain.scores, merged.scores)
    # one view: every object seen once
    one, counts = merge_instances([a], 0.5, 1, 0.5, return_view_counts=True)
    assert counts.tolist() == [1, 1] and one is a
