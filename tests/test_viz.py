import os

import numpy as np
import torch
from PIL import Image

from maskrcnn.formats.image_files import read_image, write_image
from maskrcnn.formats.rle import encode
from maskrcnn.structures import Instances, MaskList, Sample
from maskrcnn.cli.viz import main
from maskrcnn.viz import BOTH_COLOUR, GT_COLOUR, PRED_COLOUR, draw_overlay, outline_pixels, save_grid


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
    assert rgb.shape[0] == 3 and rgb.shape[2] == 14 and rgb.shape[1] > 12  # the caption band below the image
    assert torch.allclose(rgb[:, 2, 3] * 255, torch.tensor(BOTH_COLOUR, dtype=torch.float32))
    main(["--image", str(tmp_path / "img7.png"), "--gt", str(tmp_path / "train.csv"), "--out", str(out), "--no-caption"])
    assert read_image(out).shape == (3, 12, 14)


def test_save_grid(tmp_path):
    samples = []
    for k in range(3):
        m = MaskList.from_dense(_square(1 + k, 1, 4))
        samples.append(Sample(torch.rand(1, 12, 14), Instances((12, 14), m.tight_boxes(), torch.zeros(1, dtype=torch.long),
                                                                None, m), f"s{k}", {}))
    grid = save_grid(samples, str(tmp_path / "g.png"), ncols=2, pad=2)
    assert grid.shape == (2 * (12 + 2) + 2, 2 * (14 + 2) + 2, 3)
    assert tuple(grid[2 + 1, 2 + 1]) == GT_COLOUR


# ------------------------------------------------------------------ palette, caption, batch
def test_palettes_okabe_ito_by_default_and_classic_on_request():
    from maskrcnn.viz import PALETTES, overlay

    img = torch.full((1, 12, 14), 0.5)
    gt = MaskList.from_dense(_square(2, 3, 5))
    pred = MaskList.from_dense(_square(2, 3, 4))
    assert (GT_COLOUR, PRED_COLOUR, BOTH_COLOUR) == ((86, 180, 233), (213, 94, 0), (240, 228, 66))  # Okabe & Ito
    rgb = overlay(img, gt, pred, palette="classic")
    assert tuple(rgb[6, 7]) == PALETTES["classic"]["gt"] == (0, 255, 0)
    assert tuple(rgb[5, 6]) == (255, 40, 40) and tuple(rgb[2, 3]) == (255, 255, 0)


def test_caption_names_the_image_counts_and_score():
    from maskrcnn.evaluation.kaggle import image_score
    from maskrcnn.viz import add_caption, caption_text

    gt = MaskList.from_dense(torch.cat([_square(2, 3, 5), _square(8, 9, 3)]))
    pred = MaskList.from_dense(_square(2, 3, 5))
    assert caption_text("img7", gt, pred) == f"img7   GT 2   pred 1   score {image_score(pred, gt):.3f}"
    assert caption_text("img7", gt, pred).endswith("score 0.500")  # one of two cells, exactly: 1 / (1 + 1)
    assert caption_text("img7", None, pred) == "img7   pred 1"
    rgb = np.full((60, 300, 3), 128, np.uint8)
    out = add_caption(rgb, "x" * 64 + "   GT 2", [("GT", GT_COLOUR)])
    assert out.shape[1] == 300 and out.shape[0] > 60 and np.array_equal(out[:60], rgb)
    band = out[60:]
    assert tuple(band[1, 1]) == (32, 32, 32)  # a dark band
    assert (band == np.array(GT_COLOUR, np.uint8)).all(-1).any()  # the legend's swatch


def test_long_ids_are_shortened_to_the_width():
    from PIL import Image, ImageDraw

    from maskrcnn.viz import _caption_font, _fit

    font, _ = _caption_font(256)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    dsb_id = "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552"
    short = _fit(dsb_id, 240, draw, font)
    assert draw.textlength(short, font=font) <= 240 and "..." in short
    assert short.startswith(dsb_id[:8]) and short.endswith(dsb_id[-8:])
    assert _fit("img7", 240, draw, font) == "img7"


def test_batch_mode_over_a_dsb_folder_with_label_images_and_dsb_csvs(tmp_path, capsys):
    import csv

    from maskrcnn.inference.outputs import LabelImageWriter
    from maskrcnn.inference.predict_run import list_images, predict_images, write_predictions
    from maskrcnn.inference.predictor import Predictor
    from maskrcnn.config import TestConfig as Cfg
    from tests.inference.stub_model import IdStubModel
    from tests.inference.test_outputs import SPECS, _dsb_folder

    folder = _dsb_folder(tmp_path / "dsb")
    preds = Predictor(IdStubModel(num_classes=1), device="cpu")
    write_predictions(predict_images(preds, list_images(folder), Cfg(score_thresh=(0.0,)), progress=False), "",
                      writer=LabelImageWriter(str(tmp_path / "labels")))
    # ground truth from the DSB folder's masks, predictions from the label images
    assert main(["--images", folder, "--gt", folder, "--pred", str(tmp_path / "labels"), "--out",
                 str(tmp_path / "ov"), "--thickness", "2", "--no-progress"]) == 0
    assert "wrote 3 overlays" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "ov")) == ["a1.png", "b2.png", "c3.png"]
    a1 = np.asarray(Image.open(tmp_path / "ov" / "a1.png").convert("RGB"))
    H, W = SPECS["a1"].shape[1:]
    assert a1.shape[1] == W and a1.shape[0] > H
    body = a1[:H]
    assert (body == np.array(BOTH_COLOUR, np.uint8)).all(-1).sum() > 0  # predictions = ground truth: both
    assert not (body == np.array(GT_COLOUR, np.uint8)).all(-1).any()
    # a DSB2018 solution CSV (column-major) as --gt, --order auto
    from maskrcnn.formats.rle import encode

    with open(tmp_path / "sol.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "EncodedPixels", "Height", "Width"])
        for name, masks in SPECS.items():
            for k in range(masks.shape[0]):
                w.writerow([name, encode(masks[k].numpy(), order="col"), masks.shape[1], masks.shape[2]])
    assert main(["--images", folder, "--gt", str(tmp_path / "sol.csv"), "--pred", str(tmp_path / "labels"),
                 "--out", str(tmp_path / "ov2"), "--no-progress", "--no-caption"]) == 0
    # c3 has no nuclei, so the solution CSV has no row for it: drawn without masks, named in a warning
    assert "1 image(s) not in the --gt file, drawn without its masks: c3" in capsys.readouterr().err
    a1 = np.asarray(Image.open(tmp_path / "ov2" / "a1.png").convert("RGB"))
    assert a1.shape[:2] == (H, W) and not (a1 == np.array(GT_COLOUR, np.uint8)).all(-1).any()


def test_thicker_outlines_are_bands_inside_the_mask():
    m = _square(2, 3, 7, H=14, W=16)
    out = outline_pixels(MaskList.from_dense(m), thickness=2)
    expect = m[0].clone()
    expect[4:7, 5:8] = False  # all but a 2-pixel band
    assert torch.equal(out, expect)
