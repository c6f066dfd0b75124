"""Cell outlines as files that QuPath and Fiji open, written (and read back) by our own code.

Outlines come from ``maskrcnn.ops.polygons.trace_outlines``: pixel-edge polygons with corner
coordinates (pixel ``(x, y)`` spans ``[x, x + 1] x [y, y + 1]``), so filling one at the pixel
centres gives the mask back exactly. Object ``k`` (1-based) is the k-th instance in decreasing
score order, the id it has in a label image (with ``test.remove_overlaps`` on, the default; with it
off, objects may overlap here, while a label image gives shared pixels to the better one).

GeoJSON (QuPath: File > Import objects, or drag the file onto the image): one ``FeatureCollection``
per image; one ``Feature`` per object with a ``Polygon`` geometry (outer ring, then its holes;
rings closed, first vertex repeated) in pixel coordinates, or a ``MultiPolygon`` for an object of
several pieces (only with ``test.one_piece`` off). ``properties``: ``objectType`` (``detection``),
``name`` (the object id), ``classification`` (``{"name": class name, "color": [r, g, b]}``),
``measurements`` (``{"score": s}``), and ``label``, ``score`` for other readers. Where a hole
touches the outside at one pixel corner only (4-connectivity keeps them apart), the traced outline
passes through that corner twice: the even-odd fill is exact, but strict OGC validators call such a
ring self-touching (not checked against QuPath here).

ImageJ ROI zip (Fiji: drag the zip onto Fiji, or ROI Manager > More > Open): one ``.roi`` file
per object, named by its zero-padded id, in ImageJ's binary ROI format (the layout of ImageJ's
``RoiDecoder``/``RoiEncoder``: a 64-byte big-endian header with magic ``Iout``, version, type 0 =
polygon, the bounding box top/left/bottom/right and the vertex count, followed by the x then the
y coordinates as 16-bit integers relative to left/top). An ImageJ polygon has no holes: the outer
ring is written (a cell with a hole comes back filled); an object of several pieces gets one ROI
per piece (``0007``, ``0007-2``). Coordinates must fit ImageJ's 16-bit fields (images up to
32767 px).
"""
from __future__ import annotations

import io
import json
import struct
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from maskrcnn.errors import UserError
from maskrcnn.ops.polygons import Outlines, rasterize_rings, trace_outlines
from maskrcnn.structures import Instances, MaskList

ROI_MAGIC = b"Iout"
ROI_VERSION = 228
ROI_POLYGON = 0
ROI_HEADER = 64
MAX_ROI_COORD = 32767
# Distinct class colours for QuPath (r, g, b); cycled for more classes.
CLASS_COLORS = ((255, 0, 0), (0, 160, 255), (0, 200, 0), (255, 160, 0), (200, 0, 255), (0, 200, 200))


class PolygonFileError(UserError, ValueError):
    """A polygon file that cannot be written or read (the message names it)."""


def _outlines(final: Instances) -> Outlines:
    if final.masks is None or final.masks.is_soft:
        raise ValueError("polygon outputs need binary masks (run filter_predictions first)")
    masks = final.masks.to("cpu")
    return trace_outlines(masks.crops, masks.origins)


def _closed(ring: np.ndarray) -> list:
    pts = ring.tolist()
    return pts + pts[:1]


def _class_name(label: int, class_names: Optional[Sequence[str]]) -> str:
    return str(class_names[label]) if class_names and 0 <= label < len(class_names) else f"class {label}"


# ------------------------------------------------------------------------------ GeoJSON
def geojson_collection(final: Instances, class_names: Optional[Sequence[str]] = None) -> dict:
    """The GeoJSON ``FeatureCollection`` of one image's final instances (see the module doc)."""
    out = _outlines(final)
    labels = final.labels.tolist()
    scores = final.scores.tolist() if final.scores is not None else [1.0] * len(final)
    features = []
    piece_start = np.r_[True, (out.piece[1:] != out.piece[:-1])] if len(out) else np.zeros(0, bool)
    for k in range(len(final)):  # one feature per object: the format's unit
        rings = out.rings_of(k)
        if not rings:
            continue
        polys: List[list] = []
        for r in rings:
            if piece_start[r]:
                polys.append([])
            polys[-1].append(_closed(out.ring(r)))
        geometry = {"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1 else \
            {"type": "MultiPolygon", "coordinates": polys}
        name = _class_name(labels[k], class_names)
        features.append({"type": "Feature", "geometry": geometry, "properties": {
            "objectType": "detection", "name": str(k + 1),
            "classification": {"name": name, "color": list(CLASS_COLORS[labels[k] % len(CLASS_COLORS)])},
            "measurements": {"score": round(float(scores[k]), 5)},
            "label": k + 1, "score": round(float(scores[k]), 5)}})
    return {"type": "FeatureCollection", "features": features}


def geojson_bytes(final: Instances, class_names: Optional[Sequence[str]] = None) -> bytes:
    return json.dumps(geojson_collection(final, class_names), separators=(",", ":")).encode("utf-8")


def read_geojson(path: str, image_size) -> Tuple[MaskList, List[dict]]:
    """The objects of a GeoJSON file of polygons (ours, QuPath's) as a bool MaskList of
    ``image_size = (H, W)`` (each feature filled at pixel centres, even-odd) and their properties."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise PolygonFileError(f"{path}: not a readable GeoJSON file ({e})") from None
    feats = doc.get("features") if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else None
    if not isinstance(feats, list):
        raise PolygonFileError(f"{path}: expected a GeoJSON FeatureCollection")
    dense, props = [], []
    for i, feat in enumerate(feats):  # one raster per feature: what the caller asked for
        geom = feat.get("geometry") or {}
        if geom.get("type") == "Polygon":
            rings = geom["coordinates"]
        elif geom.get("type") == "MultiPolygon":
            rings = [r for poly in geom["coordinates"] for r in poly]
        else:
            raise PolygonFileError(f"{path}: feature {i} has geometry {geom.get('type')!r}, not a (Multi)Polygon")
        dense.append(rasterize_rings([np.asarray(r, dtype=np.float64)[:-1] for r in rings], image_size))
        props.append(dict(feat.get("properties") or {}))
    return _as_masks(dense, image_size), props


def _as_masks(dense: List[np.ndarray], image_size) -> MaskList:
    if not dense:
        return MaskList.empty(tuple(image_size))
    return MaskList.from_dense(torch.from_numpy(np.stack(dense)))


# ---------------------------------------------------------------------------- ImageJ ROI
def imagej_roi_bytes(ring: np.ndarray) -> bytes:
    """One ImageJ polygon ROI (``.roi`` bytes) of a ring ``int[n, 2]`` of ``(x, y)`` image corners."""
    ring = np.asarray(ring, dtype=np.int64)
    left, top = (int(v) for v in ring.min(0))
    right, bottom = (int(v) for v in ring.max(0))
    if min(left, top) < 0 or max(right, bottom) > MAX_ROI_COORD:
        raise PolygonFileError(f"an outline spans x {left}..{right}, y {top}..{bottom}: ImageJ ROI coordinates "
                               f"are 16-bit (0..{MAX_ROI_COORD}); use --format geojson for larger images")
    n = ring.shape[0]
    header = bytearray(ROI_HEADER)
    header[0:4] = ROI_MAGIC
    struct.pack_into(">h", header, 4, ROI_VERSION)
    header[6] = ROI_POLYGON
    struct.pack_into(">hhhhH", header, 8, top, left, bottom, right, n)
    coords = np.concatenate([ring[:, 0] - left, ring[:, 1] - top]).astype(">i2")
    return bytes(header) + coords.tobytes()


def read_imagej_roi(data: bytes, where: str = "<roi>") -> np.ndarray:
    """The vertices ``int64[n, 2]`` (image ``(x, y)``) of an ImageJ polygon-like ROI (polygon,
    freehand, traced; integer coordinates)."""
    if len(data) < ROI_HEADER or data[:4] != ROI_MAGIC:
        raise PolygonFileError(f"{where}: not an ImageJ ROI (no 'Iout' header)")
    kind = data[6]
    if kind not in (0, 7, 8):
        raise PolygonFileError(f"{where}: ROI type {kind} is not a polygon (0), freehand (7) or traced (8)")
    top, left, _, _, n = struct.unpack_from(">hhhhH", data, 8)
    if len(data) < ROI_HEADER + 4 * n:
        raise PolygonFileError(f"{where}: {n} vertices announced, the file is too short ({len(data)} bytes)")
    c = np.frombuffer(data, dtype=">i2", count=2 * n, offset=ROI_HEADER).astype(np.int64)
    return np.stack([c[:n] + left, c[n:] + top], 1)


def imagej_roi_zip(final: Instances) -> bytes:
    """A zip of one ``.roi`` per object (see the module doc), in object order."""
    out = _outlines(final)
    width = max(4, len(str(len(final))))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        outer = np.flatnonzero(out.area > 0)
        piece_no: Dict[int, int] = {}
        for r in outer.tolist():  # one file per object (per piece): the format's unit
            k = int(out.mask[r])
            piece_no[k] = piece_no.get(k, 0) + 1
            name = f"{k + 1:0{width}d}" + (f"-{piece_no[k]}" if piece_no[k] > 1 else "")
            z.writestr(name + ".roi", imagej_roi_bytes(out.ring(r)))
    return buf.getvalue()


def read_imagej_roi_zip(path: str, image_size) -> Tuple[MaskList, List[str]]:
    """The ROIs of an ImageJ ROI zip as a bool MaskList (each filled at pixel centres) and their names."""
    try:
        with zipfile.ZipFile(path) as z:
            entries = [(n, z.read(n)) for n in z.namelist() if n.lower().endswith(".roi")]
    except (OSError, zipfile.BadZipFile) as e:
        raise PolygonFileError(f"{path}: not a readable zip of ImageJ ROIs ({e})") from None
    dense = [rasterize_rings([read_imagej_roi(b, f"{path}:{n}")], image_size) for n, b in entries]
    return _as_masks(dense, image_size), [n[:-4] for n, _ in entries]
