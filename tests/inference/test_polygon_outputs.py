"""Outlines (maskrcnn/ops/polygons.py), their GeoJSON and ImageJ ROI files
(maskrcnn/inference/polygon_files.py), and TIFF label images: read back by our own readers always,
and by the readers users have (json, tifffile, roifile) where installed."""
import json
import struct
import zipfile

import numpy as np
import pytest
import torch

from maskrcnn.formats.label_images import encode_label_tiff, read_label_image, to_label_image
from maskrcnn.inference.outputs import build_writer
from maskrcnn.inference.polygon_files import (PolygonFileError, geojson_collection, imagej_roi_bytes, imagej_roi_zip,
                                              read_geojson, read_imagej_roi, read_imagej_roi_zip)
from maskrcnn.inference.predict_run import list_images
from maskrcnn.ops.polygons import rasterize_rings, trace_outlines
from maskrcnn.structures import Instances, MaskList
from tests.inference.test_outputs import SPECS, _dsb_folder, _predict, _same_objects


def _instances(dense, scores=None, labels=None):
    dense = torch.as_tensor(dense, dtype=torch.bool)
    m = MaskList.from_dense(dense)
    n = dense.shape[0]
    scores = torch.linspace(0.9, 0.5, n) if scores is None else torch.as_tensor(scores, dtype=torch.float32)
    labels = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels)
    return Instances(tuple(dense.shape[1:]), m.tight_boxes(), labels, scores, m)


def _rings(dense):
    m = MaskList.from_dense(torch.as_tensor(dense, dtype=torch.bool))
    return trace_outlines(m.crops, m.origins)


def _cyclic_equal(ring, expected):
    """Same closed polygon: equal up to the starting vertex."""
    ring, expected = np.asarray(ring).tolist(), [list(p) for p in expected]
    return len(ring) == len(expected) and any(ring[k:] + ring[:k] == expected for k in range(len(ring)))


# ------------------------------------------------------------------------ hand-built outlines
def test_rectangle_l_shape_and_hole_have_the_outlines_drawn_by_hand():
    d = np.zeros((3, 10, 12), bool)
    d[0, 2:5, 3:9] = True                     # rectangle x 3..9, y 2..5 (corners)
    d[1, 1:6, 1:3] = True                     # L: a column x 1..3, y 1..6 ...
    d[1, 4:6, 3:7] = True                     # ... and a foot x 3..7, y 4..6
    d[2, 1:8, 2:9] = True                     # a 7x7 block with a 3x2 hole at x 4..7, y 3..5
    d[2, 3:5, 4:7] = False
    out = _rings(d)
    assert out.mask.tolist() == [0, 1, 2, 2]
    # outer rings clockwise on the screen (y down), starting anywhere
    assert _cyclic_equal(out.ring(0), [(3, 2), (9, 2), (9, 5), (3, 5)])
    assert _cyclic_equal(out.ring(1), [(1, 1), (3, 1), (3, 4), (7, 4), (7, 6), (1, 6)])
    assert _cyclic_equal(out.ring(2), [(2, 1), (9, 1), (9, 8), (2, 8)])
    assert _cyclic_equal(out.ring(3), [(4, 3), (4, 5), (7, 5), (7, 3)])  # the hole runs the other way
    assert out.area.tolist() == [18.0, 2 * 5 + 4 * 2, 49.0, -6.0]


def test_pixels_touching_at_a_corner_are_two_pieces():
    d = np.zeros((1, 4, 4), bool)
    d[0, 1, 1] = d[0, 2, 2] = True
    out = _rings(d)
    assert len(out) == 2 and len(set(out.piece.tolist())) == 2
    assert _cyclic_equal(out.ring(0), [(1, 1), (2, 1), (2, 2), (1, 2)])
    assert _cyclic_equal(out.ring(1), [(2, 2), (3, 2), (3, 3), (2, 3)])
    # a ring whose inside touches the outside at one corner: one outline through that corner
    e = np.ones((1, 5, 5), bool)
    e[0, 1:4, 1:4] = False
    e[0, 0, 0] = False
    out = _rings(e)
    assert np.array_equal(rasterize_rings([out.ring(r) for r in range(len(out))], (5, 5)), e[0])


def test_random_masks_round_trip_through_outlines_exactly():
    g = torch.Generator().manual_seed(5)
    d = torch.rand(25, 23, 29, generator=g) > 0.35  # noisy: many pieces, holes and corner touches
    out = _rings(d)
    for k in range(d.shape[0]):
        back = rasterize_rings([out.ring(r) for r in out.rings_of(k)], (23, 29))
        assert np.array_equal(back, d[k].numpy()), k
    # no vertex in the middle of a straight run
    for r in range(len(out)):
        p = out.ring(r)
        a, b = np.roll(p, 1, 0) - p, np.roll(p, -1, 0) - p
        assert (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0] != 0).all()


def test_rasterizer_fills_pixel_centres_of_a_general_polygon():
    # a triangle (0,0)-(4,0)-(0,4): the pixel centres (x+.5, y+.5) with x + y + 1 < 4 are inside
    got = rasterize_rings([np.array([[0, 0], [4, 0], [0, 4]])], (5, 5))
    yy, xx = np.mgrid[0:5, 0:5]
    assert np.array_equal(got, (xx + yy + 1 < 4))


# --------------------------------------------------------------------------------- GeoJSON
def test_geojson_of_shapes_with_a_hole_and_two_pieces():
    d = np.zeros((2, 12, 12), bool)
    d[0, 1:8, 2:9] = True
    d[0, 3:5, 4:7] = False
    d[1, 9:11, 1:3] = True
    d[1, 11, 3] = True  # touches the block at a corner only: a second piece
    inst = _instances(d, [0.9, 0.6], [0, 1])
    doc = geojson_collection(inst, ["nucleus", "other"])
    f0, f1 = doc["features"]
    assert f0["geometry"]["type"] == "Polygon" and len(f0["geometry"]["coordinates"]) == 2
    assert f0["geometry"]["coordinates"][0][0] == f0["geometry"]["coordinates"][0][-1]  # closed rings
    assert f0["properties"]["classification"]["name"] == "nucleus" and f0["properties"]["name"] == "1"
    assert f0["properties"]["measurements"]["score"] == pytest.approx(0.9)
    assert f1["geometry"]["type"] == "MultiPolygon" and len(f1["geometry"]["coordinates"]) == 2
    assert f1["properties"]["classification"]["name"] == "other" and f1["properties"]["label"] == 2


def test_geojson_format_reads_back_with_json_and_our_reader(tmp_path):
    folder = _dsb_folder(tmp_path / "dsb")
    writer = build_writer("geojson", str(tmp_path / "out"), None, list_images(folder), ["a1", "b2", "c3"],
                          class_names=["nucleus"])
    _predict(folder, writer)
    assert writer.written == f"3 GeoJSON outline files in {tmp_path / 'out'}/"
    for name, masks in SPECS.items():
        path = tmp_path / "out" / f"{name}.geojson"
        doc = json.loads(path.read_text())
        assert doc["type"] == "FeatureCollection" and len(doc["features"]) == masks.shape[0]
        back, props = read_geojson(str(path), tuple(masks.shape[1:]))
        assert _same_objects(back.to_dense() if len(back) else torch.zeros_like(masks), masks)
        assert [p["label"] for p in props] == list(range(1, masks.shape[0] + 1))


# ------------------------------------------------------------------------------ ImageJ ROI
def test_imagej_roi_header_by_hand():
    data = imagej_roi_bytes(np.array([[3, 2], [9, 2], [9, 5], [3, 5]]))
    assert data[:4] == b"Iout" and data[6] == 0  # polygon
    top, left, bottom, right, n = struct.unpack(">hhhhH", data[8:18])
    assert (top, left, bottom, right, n) == (2, 3, 5, 9, 4)
    assert struct.unpack(">4h", data[64:72]) == (0, 6, 6, 0)  # x relative to left
    assert struct.unpack(">4h", data[72:80]) == (0, 0, 3, 3)  # y relative to top
    assert read_imagej_roi(data).tolist() == [[3, 2], [9, 2], [9, 5], [3, 5]]
    with pytest.raises(PolygonFileError, match="16-bit"):
        imagej_roi_bytes(np.array([[0, 0], [40000, 0], [40000, 2]]))


def test_imagej_roi_zip_reads_back_with_our_reader_and_roifile(tmp_path):
    folder = _dsb_folder(tmp_path / "dsb")
    writer = build_writer("imagej-roi", str(tmp_path / "rois"), None, list_images(folder), ["a1", "b2", "c3"])
    _predict(folder, writer)
    for name, masks in SPECS.items():
        path = str(tmp_path / "rois" / f"{name}.zip")
        back, names = read_imagej_roi_zip(path, tuple(masks.shape[1:]))
        assert names == [f"{k:04d}" for k in range(1, masks.shape[0] + 1)]
        # an ImageJ polygon has no holes: compare with the filled masks
        from maskrcnn.inference.filtering import fill_holes

        filled = fill_holes(masks) if masks.shape[0] else masks
        assert _same_objects(back.to_dense() if len(back) else torch.zeros_like(masks), filled)
    roifile = pytest.importorskip("roifile")
    path = str(tmp_path / "rois" / "a1.zip")
    rois = roifile.roiread(path)
    ours = [read_imagej_roi(zipfile.ZipFile(path).read(n)) for n in zipfile.ZipFile(path).namelist()]
    assert len(rois) == len(ours) == SPECS["a1"].shape[0]
    for roi, ring in zip(rois, ours):
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        assert np.array_equal(roi.coordinates(), ring)


def test_imagej_zip_holds_one_roi_per_piece():
    d = np.zeros((1, 6, 6), bool)
    d[0, 0:2, 0:2] = True
    d[0, 2:4, 2:4] = True
    z = zipfile.ZipFile(__import__("io").BytesIO(imagej_roi_zip(_instances(d))))
    assert z.namelist() == ["0001.roi", "0001-2.roi"]


# --------------------------------------------------------------------------- TIFF labels
def test_labels_tif_format_reads_back_with_our_reader_and_tifffile(tmp_path):
    folder = _dsb_folder(tmp_path / "dsb")
    writer = build_writer("labels-tif", str(tmp_path / "labels"), None, list_images(folder), ["a1", "b2", "c3"])
    _predict(folder, writer)
    for name, masks in SPECS.items():
        path = str(tmp_path / "labels" / f"{name}.tif")
        back = read_label_image(path)
        assert _same_objects(back.to_dense() if len(back) else torch.zeros_like(masks), masks)
    tifffile = pytest.importorskip("tifffile")
    a = tifffile.imread(str(tmp_path / "labels" / "a1.tif"))
    assert a.dtype == np.uint16 and a.shape == tuple(SPECS["a1"].shape[1:])
    assert sorted(np.unique(a).tolist()) == list(range(SPECS["a1"].shape[0] + 1))


def test_more_than_65535_objects_make_a_32_bit_tiff(tmp_path):
    n = 70000
    crops = torch.ones((n, 1, 1), dtype=torch.bool)
    origins = torch.stack([torch.arange(n) % 300, torch.arange(n) // 300], 1)
    m = MaskList(crops, origins, (300, 300))
    inst = Instances((300, 300), m.tight_boxes(), torch.zeros(n, dtype=torch.long), torch.ones(n), m)
    a = to_label_image(inst, max_label=2 ** 31 - 1)
    assert a.dtype == np.uint32 and int(a.max()) == n and a[0, 0] == 1 and a[1, 0] == 301
    path = tmp_path / "big.tif"
    path.write_bytes(encode_label_tiff(a))
    assert len(read_label_image(str(path))) == n
    tifffile = pytest.importorskip("tifffile")
    assert np.array_equal(tifffile.imread(str(path)).astype(np.int64), a.astype(np.int64))
