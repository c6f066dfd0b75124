import pytest
import torch

from maskrcnn.inference.merge import greedy_clusters, greedy_clusters_reference, merge_instances
from maskrcnn.structures import Instances, MaskList
from tests.inference.stub_model import random_blobs


def _instances(dense_soft, scores, labels=None):
    ml = MaskList.from_dense(dense_soft, pad=1)
    n = dense_soft.shape[0]
    labels = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels)
    return Instances(tuple(dense_soft.shape[1:]), ml.tight_boxes(), labels, torch.as_tensor(scores, dtype=torch.float32), ml)


@pytest.mark.parametrize("seed", range(6))
def test_greedy_clusters_match_the_sequential_rule(seed):
    g = torch.Generator().manual_seed(seed)
    n = 60
    a = torch.randint(0, n, (200,), generator=g)
    b = torch.randint(0, n, (200,), generator=g)
    keep = a != b
    src, dst = torch.minimum(a, b)[keep], torch.maximum(a, b)[keep]
    pair = torch.unique(src * n + dst)
    src, dst = pair // n, pair % n
    w = torch.rand(src.shape[0], generator=g)
    if seed == 0:
        w = (w * 3).round() / 3  # ties in the weights go to the better-ranked seed
    assert torch.equal(greedy_clusters(n, src, dst, w), greedy_clusters_reference(n, src, dst, w))


def _soft_blobs(n=15, seed=0, H=48, W=64):
    blobs = random_blobs(n, H, W, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return blobs.float() * (0.55 + 0.45 * torch.rand(blobs.shape, generator=g))


def test_merging_identical_views_returns_the_same_instances():
    dense = _soft_blobs()
    n = dense.shape[0]
    scores = torch.linspace(0.9, 0.2, n)
    inst = _instances(dense, scores, labels=torch.arange(n) % 3)
    merged = merge_instances([inst, inst, inst], iou_threshold=0.5, min_views=3)
    assert len(merged) == n
    assert torch.allclose(merged.scores, inst.scores)
    assert torch.equal(merged.labels, inst.labels)
    assert torch.allclose(merged.boxes, inst.boxes)
    assert torch.allclose(merged.masks.to_dense(), dense, atol=1e-6)


def test_merging_disjoint_views():
    dense = _soft_blobs(20, seed=1)
    a, b = dense[0::2], dense[1::2]  # different objects: no mask overlaps at all
    va = _instances(a, torch.full((a.shape[0],), 0.8))
    vb = _instances(b, torch.full((b.shape[0],), 0.6))
    assert len(merge_instances([va, vb], min_views=2)) == 0
    merged = merge_instances([va, vb], min_views=1)
    assert len(merged) == a.shape[0] + b.shape[0]
    # a view that missed an object counts 0 in the fused score (mean over both views)
    assert sorted(merged.scores.tolist()) == pytest.approx([0.3] * b.shape[0] + [0.4] * a.shape[0])
    assert torch.equal(merged.masks.to_dense().sum(0) > 0, dense.sum(0) > 0)


def test_soft_masks_average_by_score_on_the_union_window():
    H, W = 20, 30
    m1 = torch.zeros((1, H, W))
    m1[0, 5:12, 5:12] = 0.8
    m2 = torch.zeros((1, H, W))
    m2[0, 6:12, 5:12] = 0.5  # shifted down by one row: IoU 6/8
    m2[0, 12, 5:12] = 0.6
    v1 = _instances(m1, [0.9])
    v2 = _instances(m2, [0.3])
    merged = merge_instances([v1, v2], iou_threshold=0.5, min_views=2)
    assert len(merged) == 1
    assert merged.scores.item() == pytest.approx(0.6)
    d = merged.masks.to_dense()[0]
    assert d[5, 5].item() == pytest.approx(0.8 * 0.9 / 1.2)  # only view 1 covers row 5
    assert d[8, 8].item() == pytest.approx((0.8 * 0.9 + 0.5 * 0.3) / 1.2)
    assert d[12, 8].item() == pytest.approx(0.6 * 0.3 / 1.2)
    assert d.sum().item() == pytest.approx((m1[0] * 0.9 + m2[0] * 0.3).sum().item() / 1.2, rel=1e-5)
    assert merged.boxes[0].tolist() == pytest.approx([5, (5 * 0.9 + 6 * 0.3) / 1.2, 12, (12 * 0.9 + 13 * 0.3) / 1.2])


def test_instances_of_one_view_never_merge_and_a_cluster_holds_one_per_view():
    H, W = 20, 20
    a = torch.zeros((2, H, W))
    a[0, 2:12, 2:12] = 1.0
    a[1, 2:12, 3:13] = 1.0  # a near-duplicate in the same view
    b = torch.zeros((1, H, W))
    b[0, 2:12, 2:12] = 1.0
    va = _instances(a, [0.9, 0.8], labels=[1, 2])
    vb = _instances(b, [0.7], labels=[2])
    merged = merge_instances([va, vb], iou_threshold=0.5)
    assert len(merged) == 2
    assert merged.scores.tolist() == pytest.approx([0.8, 0.4])
    # the first cluster is the 0.9 instance with view b's match; votes: class 1 (0.9) beats class 2 (0.7)
    assert merged.labels.tolist() == [1, 2]
    # view b holding two matches of one seed keeps only its best one
    vb2 = _instances(torch.cat([b, b]), [0.7, 0.6])
    merged = merge_instances([_instances(b, [0.9]), vb2], iou_threshold=0.5, min_views=2)
    assert len(merged) == 1 and merged.scores.item() == pytest.approx(0.8)


def test_merge_checks_arguments():
    inst = _instances(_soft_blobs(4), [0.9, 0.8, 0.7, 0.6][: _soft_blobs(4).shape[0]])
    with pytest.raises(ValueError, match="min_views=3 exceeds"):
        merge_instances([inst, inst], min_views=3)
    other = Instances.empty((5, 5), with_scores=True, with_masks=True)
    with pytest.raises(ValueError, match="view 1 is for an image of"):
        merge_instances([inst, other])
    empty = Instances.empty(inst.image_size, with_scores=True, with_masks=True)
    empty = empty.replace(masks=MaskList(torch.zeros((0, 1, 1)), torch.zeros((0, 2), dtype=torch.long), inst.image_size))
    assert len(merge_instances([empty, empty])) == 0


def test_cross_view_edges_equal_thresholded_crop_mask_iou():
    from maskrcnn.inference.merge import cross_view_edges
    from maskrcnn.ops import crop_mask_iou

    g = torch.Generator().manual_seed(4)
    base = random_blobs(12, 40, 50, seed=4, rmin=3, rmax=7)
    views = []
    for k in range(4):  # jittered copies: shifted by up to 2 pixels, some pixels dropped
        dy, dx = torch.randint(-2, 3, (2,), generator=g).tolist()
        shifted = torch.roll(base, shifts=(dy, dx), dims=(1, 2)) & (torch.rand(base.shape, generator=g) > 0.15)
        views.append(shifted)
    dense = torch.cat(views)
    ml = MaskList.from_dense(dense, pad=2)
    vid = torch.arange(4).repeat_interleave(base.shape[0])
    full = crop_mask_iou(ml.crops, ml.origins, ml.crops, ml.origins)
    counts = []
    for t, method in ((0.2, "sparse"), (0.4, "sparse"), (0.6, "sparse"), (0.2, "pairs"), (0.4, "pairs"), (0.6, "pairs")):
        i, j, iou, areas = cross_view_edges([ml[torch.nonzero(vid == k)[:, 0]] for k in range(4)], t, method=method)
        assert torch.equal(areas, dense.flatten(1).sum(1))
        expect = (full > t) & (vid[:, None] != vid[None, :]) & torch.ones_like(full, dtype=torch.bool).triu(1)
        got = torch.zeros_like(expect)
        got[i, j] = True
        assert torch.equal(got, expect)
        assert torch.allclose(iou, full[i, j])
        counts.append(int(expect.sum()))
    assert counts[0] > counts[1] > 0 and counts[:3] == counts[3:]  # the test has matches to find


def test_views_with_different_crop_sizes_and_the_fallback_without_sparse_products(monkeypatch):
    import maskrcnn.inference.merge as merge_mod

    dense = _soft_blobs(12, seed=6)
    n = dense.shape[0]
    scores = torch.linspace(0.95, 0.3, n)
    a = _instances(dense, scores)
    ml = MaskList.from_dense(dense, pad=5)  # same masks, larger crops
    b = Instances(a.image_size, a.boxes, a.labels, a.scores, ml)
    merged = merge_instances([a, b], min_views=2)
    assert len(merged) == n
    assert torch.allclose(merged.masks.to_dense(), dense, atol=1e-6)

    def unsupported(*args, **kw):
        raise NotImplementedError("no sparse CSR here")

    monkeypatch.setattr(merge_mod, "pixel_intersections", unsupported)
    again = merge_instances([a, b], min_views=2)
    assert torch.equal(again.scores, merged.scores)
    assert torch.equal(again.masks.to_dense(), merged.masks.to_dense())


def test_each_instance_is_matched_at_its_own_class_mask_threshold():
    H, W = 24, 24
    core = torch.zeros((1, H, W))
    core[0, 8:16, 8:16] = 0.9
    halo = core.clone()
    halo[0, 4:20, 4:20] = torch.where(halo[0, 4:20, 4:20] > 0, halo[0, 4:20, 4:20], torch.tensor(0.4))
    for labels, thresholds, merged_count in (([0], 0.5, 1), ([0], 0.3, 2), ([1], (0.3, 0.5), 1), ([0], (0.3, 0.5), 2)):
        a = _instances(core, [0.9], labels=labels)
        b = _instances(halo, [0.8], labels=labels)  # at 0.3 the halo makes it 4x the core: IoU 0.25
        assert len(merge_instances([a, b], iou_threshold=0.5, mask_threshold=thresholds)) == merged_count
