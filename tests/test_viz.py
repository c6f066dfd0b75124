import numpy as np
import torch

from maskrcnn.data.images import read_image, write_image
from maskrcnn.data.rle import encode
from maskrcnn.structures import Instances, MaskList, Sample
from maskrcnn.viz import BOTH_COLOUR, GT_COLOUR, PRED_COLOUR, draw_overlay, main, outline_pixels, save_grid


def _square(y0, x0, s, H=12, W=14):
    m = torch.zeros(1, H, W, dtype=torch.bool)
    m[0, y0:y0 + s, x0:x0 + s] = True
    return m


def test_outline_of_a_square_is_its_border():
    m = _square(2, 3, 5)
    out = outline_pixels(MaskList.from_dense(m))
    expect = m[0].clone()
    expect[3:6, 4:7] = False  # interior
    assert torch.equal(out, expect)
    soft = MaskList(m.float() * 0.7, torch.zeros(1, 2, dtype=torch.long), (12, 14))
    assert torch.equal(outline_pixels(soft), expect)


def test_overlay_colours_gt_pred_and_both(tmp_path):
    img = torch.full((1, 12, 14), 0.5)
    gt = MaskList.from_dense(_square(2, 3, 5))
    pred = MaskList.from_dense(_square(2, 3, 4))
    path = tmp_path / "o.png"
    rgb = draw_overlay(img, Instances((12, 14), gt.tight_boxes(), torch.zeros(1, dtype=torch.long), None, gt), pred,
                       str(path))
    assert rgb.shape == (12, 14, 3)
    assert tuple(rgb[2, 3]) == BOTH_COLOUR  # top-left corner is on both outlines
    assert tuple(rgb[6, 7]) == GT_COLOUR  # bottom-right corner of the gt only
    assert tuple(rgb[5, 6]) == PRED_COLOUR  # bottom-right corner of the prediction only
    assert tuple(rgb[0, 0]) == (128, 128, 128)
    assert np.array_equal(np.asarray(read_image(path).permute(1, 2, 0) * 255).round().astype(np.uint8), rgb)


def test_cli_with_label_and_submission_csvs(tmp_path, capsys):
    write_image(tmp_path / "img7.png", torch.rand(1, 12, 14))
    m = _square(2, 3, 5)[0].numpy()
    (tmp_path / "train.csv").write_text(f"id,annotation,width,height,cell_type\nimg7,{encode(m)},14,12,cort\nother,1 3,14,12,cort\n")
    (tmp_path / "sub.csv").write_text(f"id,predicted\nimg7,{encode(m)}\nimg7,\n")
    out = tmp_path / "ov.png"
    main(["--image", str(tmp_path / "img7.png"), "--gt", str(tmp_path / "train.csv"), "--pred", str(tmp_path / "sub.csv"),
          "--out", str(out)])
    assert "gt 1 objects, pred 1 objects" in capsys.readouterr().out
    rgb = read_image(out)
    assert rgb.shape == (3, 12, 14)
    assert torch.allclose(rgb[:, 2, 3] * 255, torch.tensor(BOTH_COLOUR, dtype=torch.float32))


def test_save_grid(tmp_path):
    samples = []
    for k in range(3):
        m = MaskList.from_dense(_square(1 + k, 1, 4))
        samples.append(Sample(torch.rand(1, 12, 14), Instances((12, 14), m.tight_boxes(), torch.zeros(1, dtype=torch.long),
                                                                None, m), f"s{k}", {}))
    grid = save_grid(samples, str(tmp_path / "g.png"), ncols=2, pad=2)
    assert grid.shape == (2 * (12 + 2) + 2, 2 * (14 + 2) + 2, 3)
    assert tuple(grid[2 + 1, 2 + 1]) == GT_COLOUR
