"""Memory of `evaluate.py score` is bounded by the objects, not rows x the largest object's box
(issue 12: one frame-shaped mask among many tiny cells in a small, valid file)."""
import tracemalloc

import numpy as np

from maskrcnn.evaluation.score import score_files
from maskrcnn.formats.rle import encode


def _frame_and_cells(path_sub, path_lab, cells, H=520, W=704):
    frame = np.zeros((H, W), dtype=bool)
    frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = True, True, True, True
    rles = [encode(frame)]
    ys, xs = np.meshgrid(np.arange(5, H - 5, 6), np.arange(5, W - 5, 6), indexing="ij")
    for y, x in list(zip(ys.ravel(), xs.ravel()))[:cells]:
        rles.append(" ".join(f"{(y + d) * W + x + 1} 2" for d in range(2)))  # a 2 x 2 cell
    with open(path_sub, "w") as f:
        f.write("id,predicted\n" + "".join(f"img,{r}\n" for r in rles))
    with open(path_lab, "w") as f:
        f.write("id,annotation,width,height\n" + "".join(f"img,{r},{W},{H}\n" for r in rles))


def test_a_frame_among_tiny_cells_costs_what_its_runs_hold(tmp_path):
    """Until e1502d4 each of the N + 1 masks was decoded into a crop of the frame's size (N x 366 KB
    of numpy arrays per side). Now the arrays scoring allocates follow the objects' runs (and a
    box test over blocks of at most 2^20 pairs): the peak of traced (numpy) allocations stays
    under a few image-sized crops where the old decoding needed N of them."""
    peaks = {}
    for n in (50, 400):
        sub, lab = str(tmp_path / f"s{n}.csv"), str(tmp_path / f"l{n}.csv")
        _frame_and_cells(sub, lab, n)
        tracemalloc.start()
        try:
            result = score_files(sub, lab)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.summary["mAP"] == 1.0 and not result.errors and result.num_rows == n + 1
    one_image = 520 * 704  # bytes of one bool image-sized crop
    assert peaks[50] < 5 * one_image and peaks[400] < 10 * one_image, peaks  # not 50 / 400 image-sized crops
