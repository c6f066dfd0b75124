import os
import subprocess
import sys

import numpy as np
import pytest

from maskrcnn.evaluation.kaggle import image_score
from maskrcnn.formats.kaggle_csv import masks_to_rows, write_labels, write_submission
from tests.evaluation.shapes import dense, random_blobs, rect

import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H, W = 24, 32


@pytest.fixture
def files(tmp_path):
    """Three labelled images (two classes); a submission with a perfect, a shifted and a missing image."""
    a = [rect(H, W, 2, 8, 2, 8), rect(H, W, 10, 20, 10, 20)]
    b = [rect(H, W, 0, 10, 0, 10)]
    c = [rect(H, W, 5, 9, 20, 30)]
    labels = str(tmp_path / "labels.csv")
    write_labels(labels, [("a", dense(a), "astro"), ("b", dense(b), "cort"), ("c", dense(c), "cort")])
    shifted = rect(H, W, 0, 10, 2, 12)  # IoU 80/120 with b: 0.4
    sub = str(tmp_path / "sub.csv")
    write_submission(masks_to_rows("a", dense(a)) + masks_to_rows("b", dense(shifted)), sub)
    return labels, sub, tmp_path


def test_score_prints_per_class_and_last_line_map(files, capsys):
    labels, sub, _ = files
    assert evaluate.main(["score", "--submission", sub, "--labels", labels]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    # a: 1.0 (astro); b: 0.4, c: missing -> 0 (cort). mAP = mean of per-image scores.
    assert out[-1] == f"mAP {(1 + 0.4 + 0) / 3:.4f}"
    assert any(line.startswith("class astro") and "1.0000" in line for line in out)
    assert any(line.startswith("class cort") and "0.2000" in line and "(2 images)" in line for line in out)


def test_invalid_submission_exits_nonzero_unless_allowed(files, capsys):
    labels, _, tmp = files
    sub = str(tmp / "bad.csv")
    # Two overlapping masks on image a and an unsorted pair on image b.
    write_submission([("a", "1 10"), ("a", "5 3"), ("b", "40 2 1 2")], sub)
    assert evaluate.main(["score", "--submission", sub, "--labels", labels]) == 1
    cap = capsys.readouterr()
    assert "lines 2 and 3 (image a)" in cap.err and "line 4 (image b)" in cap.err and "not sorted" in cap.err
    assert "mAP" not in cap.out
    assert evaluate.main(["score", "--submission", sub, "--labels", labels, "--allow-invalid"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mAP 0.")


def test_unknown_image_id_is_rejected(files, capsys):
    labels, _, tmp = files
    sub = str(tmp / "extra.csv")
    write_submission([("zzz", "1 1")], sub)
    assert evaluate.main(["score", "--submission", sub, "--labels", labels]) == 1
    assert "'zzz' is not in the label file" in capsys.readouterr().err


def test_malformed_file_is_a_clear_error(files, capsys):
    labels, _, tmp = files
    sub = tmp / "hdr.csv"
    sub.write_text("ImageId,EncodedPixels\na,1 1\n")
    assert evaluate.main(["score", "--submission", str(sub), "--labels", labels]) == 2
    assert "header" in capsys.readouterr().err


def test_column_major_files(tmp_path, capsys):
    rng = np.random.default_rng(3)
    gt = random_blobs(rng, 6, H, W, overlap=False)
    pred = np.roll(gt, 1, axis=2)
    labels, sub = str(tmp_path / "l.csv"), str(tmp_path / "s.csv")
    write_labels(labels, [("x", dense(gt), None)], order="col")
    write_submission(masks_to_rows("x", dense(pred), order="col"), sub)
    assert evaluate.main(["score", "--submission", sub, "--labels", labels, "--order", "col"]) == 0
    expected = image_score(dense(pred), dense(gt))
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"mAP {expected:.4f}"


def test_end_to_end_subprocess_last_line(files):
    labels, sub, _ = files
    r = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "score", "--submission", sub, "--labels", labels],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("mAP ") and len(last.split()[1].split(".")[1]) == 4
    assert float(last.split()[1]) == pytest.approx(1.4 / 3, abs=5e-5)


def test_score_reads_the_dsb2018_headers_column_major(tmp_path, capsys):
    from maskrcnn.formats.rle import encode
    from maskrcnn.formats.kaggle_csv import DSB_SUBMISSION_HEADER

    # Two non-square objects: column-major and row-major RLEs of them differ.
    m1, m2 = rect(H, W, 2, 5, 3, 12), rect(H, W, 10, 20, 20, 23)
    (tmp_path / "solution.csv").write_text(
        "ImageId,EncodedPixels,Height,Width,Usage\n"
        f"q,{encode(m1, order='col')},{H},{W},Public\nq,{encode(m2, order='col')},{H},{W},Public\n")
    sub = str(tmp_path / "sub.csv")
    write_submission([("q", encode(m1, order="col"))], sub, header=DSB_SUBMISSION_HEADER)
    assert evaluate.main(["score", "--submission", sub, "--labels", str(tmp_path / "solution.csv")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mAP 0.5000"  # one of two found: 1 / (1 + 1)
    # a Sartorius label file with a DSB2018 submission: the order is unclear, one error line
    write_labels(str(tmp_path / "train.csv"), [("q", dense([m1, m2]), None)])
    assert evaluate.main(["score", "--submission", sub, "--labels", str(tmp_path / "train.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--order" in err and err.count("\n") == 1
    assert evaluate.main(["score", "--submission", sub, "--labels", str(tmp_path / "train.csv"), "--order", "col"]) == 0


def test_column_major_label_files_say_so_in_their_header(tmp_path, capsys):
    from maskrcnn.formats.kaggle_csv import DSB_SUBMISSION_HEADER, csv_kind

    rng = np.random.default_rng(4)
    gt = random_blobs(rng, 5, H, W, overlap=False)
    gt = gt[gt.reshape(5, -1).any(1)]
    pred = np.roll(gt, 1, axis=1)
    labels, sub = str(tmp_path / "l.csv"), str(tmp_path / "s.csv")
    write_labels(labels, [("x", dense(gt), None)], order="col")
    assert open(labels).readline().strip() == "ImageId,EncodedPixels,Height,Width,cell_type" and csv_kind(labels) == "dsb"
    write_submission(masks_to_rows("x", dense(pred), order="col"), sub, header=DSB_SUBMISSION_HEADER)
    assert evaluate.main(["score", "--submission", sub, "--labels", labels]) == 0  # --order auto: col
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"mAP {image_score(dense(pred), dense(gt)):.4f}"
