"""Small mask builders shared by the evaluation tests."""
import numpy as np
import torch

from maskrcnn.structures import MaskList


def dense(masks, size=None):
    """MaskList from a list/array of dense bool masks [N, H, W]."""
    m = torch.as_tensor(np.asarray(masks, dtype=bool))
    if m.dim() == 2:
        m = m[None]
    if m.shape[0] == 0 and size is not None:
        return MaskList.empty(size)
    return MaskList.from_dense(m)


def rect(H, W, y0, y1, x0, x1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def jittered_case(seed, h=64, w=80):
    """Random ground truth and predictions ``(pred, gt)`` (bool ``[N, h, w]``) for seed ``seed``:
    jittered copies of ~80% of the GT cells plus random extras of widely spread sizes, shuffled;
    the GT cells may overlap for odd seeds."""
    rng = np.random.default_rng(seed)
    gt = random_blobs(rng, int(rng.integers(0, 25)), h, w, overlap=bool(seed % 2), rmax=14)
    keep = gt[rng.random(len(gt)) < 0.8]
    shift = np.roll(keep, shift=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(1, 2))
    extras = random_blobs(rng, int(rng.integers(0, 8)), h, w, rmin=1, rmax=30)
    pred = np.concatenate([shift, extras]).astype(bool)
    return pred[rng.permutation(len(pred))], gt


def random_blobs(rng, n, H, W, rmin=2, rmax=12, overlap=True):
    """n random ellipses (may overlap each other unless overlap=False: then later ones lose pixels)."""
    yy, xx = np.mgrid[:H, :W]
    out = np.zeros((n, H, W), dtype=bool)
    taken = np.zeros((H, W), dtype=bool)
    for k in range(n):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(rmin, rmax, size=2)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if not overlap:
            m &= ~taken
            taken |= m
        out[k] = m
    return out
