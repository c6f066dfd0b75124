"""How good are pseudo-labels? Their cells scored against the true labels the experiment hid.

    python -m bench.pseudo_label_quality --pseudo output/semi/pseudo --labels .devdata/dsb2018.npz

For each pseudo-labelled image with ground truth in ``--labels`` (a dataset cache of the same
ids): the Kaggle image score of the cells (ignore regions left out), the share of true objects
that a cell matches at IoU > 0.5 (recall), the share of cells that match one (precision), and the
share of true objects whose pixels lie mostly (> 0.5) in ignore regions. Mean over images, per
imaging domain. Diagnostic only: the labels it reads were never used for training.
"""
import argparse

import numpy as np
import torch

from maskrcnn.formats.dataset_cache import CacheDataset
from maskrcnn.data.pseudo_mix import pseudo_path
from maskrcnn.evaluation.kaggle import candidate_pairs, image_precisions
from maskrcnn.inference.pseudo_selection import _covered_fraction
from maskrcnn.structures import IGNORE_LABEL


def _match_counts(pred, gt):
    """(true objects matched by a cell at IoU > 0.5, cells matching a true object): pairs with
    IoU > 0.5 are one-to-one (the metric's candidate pairs)."""
    c = candidate_pairs(pred, gt)
    return int(np.unique(c.gt_idx).size), int(np.unique(c.pred_idx).size)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pseudo", required=True)
    p.add_argument("--labels", required=True)
    a = p.parse_args()
    pl = CacheDataset(pseudo_path(a.pseudo))
    gt_ds = CacheDataset(a.labels)
    pos = {i: n for n, i in enumerate(gt_ds.image_ids)}
    rows = []
    for n, iid in enumerate(pl.image_ids):
        s = pl.load(n)
        g = gt_ds.load(pos[iid]).instances.masks
        lab = s.instances.labels
        cells = s.instances.masks[torch.nonzero(lab >= 0).squeeze(1)]
        regions = s.instances.masks[torch.nonzero(lab == IGNORE_LABEL).squeeze(1)]
        score = float(np.mean(image_precisions(cells, g)))
        rec, prec = _match_counts(cells, g)
        in_ignore = int((_covered_fraction(g, regions) > 0.5).sum()) if len(regions) and len(g) else 0
        rows.append((s.meta.get("cell_type"), score, rec / max(len(g), 1), prec / max(len(cells), 1),
                     in_ignore / max(len(g), 1), len(g), len(cells), len(regions)))
    print("| images | domain | Kaggle score of the cells | recall@0.5 | precision@0.5 | true objects mostly in ignore regions | true objects | cells | ignore regions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dom in [None] + sorted({r[0] for r in rows}):
        rr = [r for r in rows if dom is None or r[0] == dom]
        m = lambda k: float(np.mean([r[k] for r in rr]))
        t = lambda k: int(sum(r[k] for r in rr))
        print(f"| {len(rr)} | {dom or 'all'} | {m(1):.3f} | {m(2):.3f} | {m(3):.3f} | {m(4):.3f} | {t(5)} | {t(6)} | {t(7)} |")


if __name__ == "__main__":
    main()
