"""What ``predict.py`` writes, one writer per ``--format``; each takes an image's final instances
(binary, non-overlapping masks sorted by decreasing score: ``maskrcnn.inference.filtering``).

| format | ``--out`` | what |
| --- | --- | --- |
| ``csv`` (default) | a file | Kaggle submission ``id,predicted``, one row per object, row-major RLE (``--order col`` for column-major); validated as Kaggle would before an atomic write |
| ``dsb`` | a file | 2018 Data Science Bowl submission ``ImageId,EncodedPixels``, column-major RLE; validated the same way |
| ``coco`` | a file | COCO results json (detectron2's ``coco_instances_results.json``): a list of ``{"image_id", "category_id", "segmentation": RLE, "bbox": [x, y, w, h], "score"}`` that ``pycocotools.COCO.loadRes`` reads |
| ``labels`` | a folder | one label image ``<id>.png`` per input: 16-bit grayscale PNG of the image's size, 0 = background, 1..N = the objects in decreasing score order |
| ``labels-tif`` | a folder | the same as ``<id>.tif``: 16-bit TIFF (32-bit integer beyond 65535 objects), deflate-compressed; what tifffile, Fiji and napari read |
| ``geojson`` | a folder | ``<id>.geojson``: a FeatureCollection of the objects' outlines for QuPath (``maskrcnn.inference.polygon_files``) |
| ``imagej-roi`` | a folder | ``<id>.zip``: one ImageJ polygon ROI per object, for Fiji's ROI Manager (``maskrcnn.inference.polygon_files``) |

COCO ids (``CocoResultsWriter``):

- with a COCO json (``--coco-gt``): ``image_id`` is the id of the json's image whose ``file_name``
  matches the input (its base name, or the base name without suffix, equals the input's file name
  or id; a json image that matches no input is fine, an input that matches no json image is an
  error before any prediction); ``category_id`` is the category of the model's class: by name when
  the model's class names are known (``data.classes``, or the reader's built-in names) and all are
  categories of the json, else by position in the json's categories sorted by id (the order
  ``CocoDataset`` trains with), which needs as many categories as the model has classes;
- without: ``image_id`` is the input's 1-based position in the sorted list of inputs (the order
  ``predict.py`` prints), ``category_id`` is ``label + 1`` (as ``maskrcnn.evaluation.coco_ap`` and
  the synthetic data's COCO export number them).

Label images are PNG (lossless, compressed, and what Cellpose writes: ``*_cp_masks.png``): Pillow
reads them back as mode ``I;16``, napari (imageio) and Fiji as 16-bit. An object count over 65535
is an error (TIFF label images switch to 32-bit instead). Overlaps cannot be stored in one label image: where masks overlap (only when
``test.remove_overlaps`` is off), the better-scoring object keeps the pixel, and objects left
without pixels are dropped, so labels stay consecutive.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from maskrcnn.errors import UserError
from maskrcnn.fileio import atomic_open, atomic_write_bytes
from maskrcnn.formats.image_files import encode_png
from maskrcnn.formats.kaggle_csv import DSB_SUBMISSION_HEADER, SUBMISSION_HEADER
from maskrcnn.formats.label_images import MAX_LABEL_32, encode_label_tiff, to_label_image
from maskrcnn.inference.submission import instances_to_rows, save_submission
from maskrcnn.structures import Instances

FORMATS = ("csv", "dsb", "coco", "labels", "labels-tif", "geojson", "imagej-roi")
DEFAULT_OUT = {"csv": "submission.csv", "dsb": "submission.csv", "coco": "results.json", "labels": "labels",
               "labels-tif": "labels", "geojson": "outlines", "imagej-roi": "rois"}
FOLDER_FORMATS = ("labels", "labels-tif", "geojson", "imagej-roi")  # --out is a folder, one file per image
LABEL_SUFFIX = ".png"


class OutputError(UserError, ValueError):
    """An output that cannot be written as asked (the message names the file or the mapping)."""


# --------------------------------------------------------------------------- COCO ids
def model_class_names(data_cfg) -> Optional[List[str]]:
    """The model's class names from its config's data section without reading any data:
    ``data.classes``, else the reader's built-in names (None when the reader takes them from its
    files: coco, cache)."""
    if data_cfg.class_agnostic:
        return ["cell"]
    if data_cfg.classes:
        return list(data_cfg.classes)
    if data_cfg.format == "synthetic":
        from maskrcnn.data.synthetic import CELL_TYPES

        return list(CELL_TYPES)
    if data_cfg.format in ("sartorius", "sartorius_unlabeled"):
        from maskrcnn.data.sartorius import SARTORIUS_CLASSES

        return list(SARTORIUS_CLASSES)
    if data_cfg.format == "label_folders":
        return ["cell"]
    if data_cfg.format == "dsb2018":
        from maskrcnn.data.dsb2018 import DSB_CLASSES

        return list(DSB_CLASSES)
    return None


def coco_image_ids(gt_path: str, paths: Sequence[str], ids: Sequence[str]) -> Dict[str, int]:
    """``{our image id: the COCO json's image id}`` by file name (see the module doc).

    Raises OutputError naming the json and the first inputs it does not hold, or an input that two
    json images match.
    """
    from maskrcnn.formats.coco_json import check_image_ids, load_coco_json

    doc = load_coco_json(gt_path)
    by_name: Dict[str, List[int]] = {}
    check_image_ids(doc, gt_path)
    for im in doc["images"]:
        base = os.path.basename(str(im.get("file_name", "")))
        for key in {base, os.path.splitext(base)[0]}:
            by_name.setdefault(key, []).append(im["id"])
    out, missing = {}, []
    for path, iid in zip(paths, ids):
        found = by_name.get(os.path.basename(path)) or by_name.get(iid) or []
        found = sorted(set(found))
        if not found:
            missing.append(os.path.basename(path))
        elif len(found) > 1:
            raise OutputError(f"{gt_path}: images {found} all match the input {path} by file name")
        else:
            out[iid] = found[0]
    if missing:
        raise OutputError(f"{gt_path}: no image with the file name of {len(missing)} input(s), e.g. "
                          f"{', '.join(missing[:3])} (COCO image ids are matched by file_name)")
    return out


def coco_category_ids(gt_path: str, class_names: Optional[Sequence[str]], num_classes: int) -> List[int]:
    """``category_ids[label]`` from a COCO json's categories (see the module doc)."""
    from maskrcnn.formats.coco_json import load_coco_json

    cats = sorted(load_coco_json(gt_path).get("categories") or [], key=lambda c: int(c["id"]))
    by_name = {str(c["name"]): int(c["id"]) for c in cats}
    if class_names and all(n in by_name for n in class_names):
        return [by_name[n] for n in class_names]
    if len(cats) == num_classes:
        return [int(c["id"]) for c in cats]
    raise OutputError(
        f"{gt_path}: cannot map the model's {num_classes} class(es) {list(class_names or [])} to the json's "
        f"categories {[(int(c['id']), c['name']) for c in cats]}: neither all names match nor the counts"
    )


# ----------------------------------------------------------------------------- writers
class Writer:
    """``add(image_id, final)`` per image, then ``finish()``, which returns (and keeps in ``written``)
    what was written, for the log."""

    written: str = ""

    def add(self, image_id: str, final: Instances) -> None:
        raise NotImplementedError

    def skip(self, image_id: str) -> None:
        """An image that could not be read: nothing to write (the CSV formats write an empty row)."""

    def abort(self) -> None:
        """The run failed or was interrupted before ``finish``: drop what was staged."""

    def finish(self) -> str:
        raise NotImplementedError


class SubmissionWriter(Writer):
    """Kaggle CSV (``csv``: ``id,predicted``; ``dsb``: ``ImageId,EncodedPixels`` column-major)."""

    def __init__(self, path: str, order: str = "row", header: Sequence[str] = SUBMISSION_HEADER):
        self.path, self.order, self.header = path, order, tuple(header)
        self.rows: List[Tuple[str, str]] = []
        self.sizes: Dict[str, Tuple[int, int]] = {}

    def add(self, image_id: str, final: Instances) -> None:
        self.rows.extend(instances_to_rows(image_id, final, self.order))
        self.sizes[image_id] = tuple(final.image_size)

    def skip(self, image_id: str) -> None:
        self.rows.append((image_id, ""))
        self.sizes[image_id] = (1, 1)  # an empty row fits any size

    def finish(self) -> str:
        save_submission(self.rows, self.path, self.sizes, self.header)
        self.written = f"{self.path} ({len(self.sizes)} images, {sum(1 for _, r in self.rows if r)} objects)"
        return self.written


class CocoResultsWriter(Writer):
    """COCO results json (see the module doc for the ids); written atomically by ``finish``."""

    def __init__(self, path: str, image_ids: Dict[str, int], category_ids: Sequence[int]):
        self.path = path
        self.image_ids = dict(image_ids)
        self.category_ids = list(category_ids)
        self.results: List[dict] = []

    def add(self, image_id: str, final: Instances) -> None:
        from maskrcnn.formats.coco_json import masks_to_coco_rles

        if len(final) == 0:
            return
        labels = final.labels.tolist()
        if max(labels) >= len(self.category_ids):
            raise OutputError(f"image {image_id}: class {max(labels)} has no COCO category ({len(self.category_ids)} known)")
        rles = masks_to_coco_rles(final.masks.to("cpu"))
        b = final.boxes.detach().double().cpu()
        xywh = torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()
        coco_id = self.image_ids[image_id]
        for rle, box, label, score in zip(rles, xywh, labels, final.scores.tolist()):  # one dict per object: the format
            self.results.append({"image_id": coco_id, "category_id": self.category_ids[label],
                                 "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                                 "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)})

    def finish(self) -> str:
        with atomic_open(self.path, "w") as f:
            json.dump(self.results, f, separators=(",", ":"))
        self.written = f"{self.path} ({len(self.image_ids)} images, {len(self.results)} objects)"
        return self.written


class LabelImageWriter(Writer):
    """One file per image in a folder: ``encode(final) -> bytes`` (default: the 16-bit label PNG;
    ``folder_writer`` gives the other folder formats).

    The files are staged in a hidden sibling folder ``.<folder>.partial.<pid>`` and moved into
    ``folder`` by ``finish``, so an interrupted or failed run leaves ``folder`` as it was (and a
    ``.partial`` folder that says what it is), never a half-full folder that looks complete.
    """

    def __init__(self, folder: str, suffix: str = LABEL_SUFFIX, encode=None, what: str = "label images",
                 fmt: str = "labels"):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise OutputError(f"--format {fmt} writes a folder of {what}, but {folder} is a file")
        self.folder, self.suffix, self.what, self.fmt = folder, suffix, what, fmt
        self.encode = encode if encode is not None else (lambda final: encode_png(to_label_image(final), compress_level=6))
        parent, name = os.path.split(os.path.abspath(folder))
        self.staging = os.path.join(parent, f".{name}.partial.{os.getpid()}")
        self.staged: List[str] = []
        self.count = 0

    def path_for(self, image_id: str) -> str:
        return os.path.join(self.folder, image_id + self.suffix)

    def add(self, image_id: str, final: Instances) -> None:
        from maskrcnn.fileio import WriteError

        name = image_id + self.suffix
        data = self.encode(final)
        try:
            atomic_write_bytes(os.path.join(self.staging, name), data)
        except WriteError as e:  # name the file the user asked for, not the staging folder's
            raise WriteError(f"{str(e).split(' writing ')[0]} writing {self.path_for(image_id)}") from e
        self.staged.append(name)
        self.count += 1

    def finish(self) -> str:
        from maskrcnn.fileio import write_failure

        try:
            os.makedirs(self.folder, exist_ok=True)
            for name in self.staged:  # renames within one file system: quick, each atomic
                os.replace(os.path.join(self.staging, name), os.path.join(self.folder, name))
        except OSError as e:
            failure = write_failure(e, self.folder)
            if failure is not None:
                raise failure from e
            raise
        self.abort()
        self.written = f"{self.count} {self.what} in {self.folder}/"
        return self.written

    def abort(self) -> None:
        import shutil

        shutil.rmtree(self.staging, ignore_errors=True)


def check_file_names(ids: Sequence[str], suffix: str, what: str = "--format labels") -> None:
    """OutputError naming the first id whose file ``<id><suffix>`` is longer than a file name may be
    (255 bytes), before any prediction runs."""
    for i in ids:
        if len((i + suffix).encode()) > 255:
            raise OutputError(f"{what}: the image id {i[:40]}... ({len(i)} characters) is too long for a file name "
                              f"(at most {255 - len(suffix)} bytes); rename the image")


def folder_writer(fmt: str, folder: str, class_names: Optional[Sequence[str]] = None) -> LabelImageWriter:
    """The writer of a folder format (``FOLDER_FORMATS``)."""
    from maskrcnn.inference.polygon_files import geojson_bytes, imagej_roi_zip

    if fmt == "labels-tif":
        return LabelImageWriter(folder, ".tif", lambda f: encode_label_tiff(to_label_image(f, MAX_LABEL_32)),
                                "label images", fmt)
    if fmt == "geojson":
        return LabelImageWriter(folder, ".geojson", lambda f: geojson_bytes(f, class_names), "GeoJSON outline files",
                                fmt)
    if fmt == "imagej-roi":
        return LabelImageWriter(folder, ".zip", imagej_roi_zip, "ImageJ ROI zips", fmt)
    return LabelImageWriter(folder)


def build_writer(fmt: str, out: str, order: Optional[str] = None, paths: Sequence[str] = (), ids: Sequence[str] = (),
                 coco_gt: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                 num_classes: int = 1) -> Writer:
    """The writer of ``--format fmt`` into ``out``; checks what it can before any prediction runs
    (COCO ids of every input, label images that would overwrite an input).

    Args:
        order: RLE order of ``csv`` (None: ``row``); ``dsb`` is always ``col``.
        paths, ids: the input images and their ids, in prediction order.
        coco_gt: a COCO json giving the COCO image and category ids (``coco`` only).
        class_names, num_classes: the model's classes (``coco`` with ``coco_gt``).
    """
    if fmt not in FORMATS:
        raise OutputError(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if coco_gt and fmt != "coco":
        raise OutputError(f"--coco-gt maps COCO ids and needs --format coco (got --format {fmt})")
    if order is not None and fmt != "csv" and not (fmt == "dsb" and order == "col"):
        raise OutputError(f"--order applies to --format csv only (--format dsb is column-major), got --order {order} "
                          f"with --format {fmt}")
    if fmt == "csv":
        return SubmissionWriter(out, order or "row", SUBMISSION_HEADER)
    if fmt == "dsb":
        return SubmissionWriter(out, "col", DSB_SUBMISSION_HEADER)
    if fmt == "coco":
        if coco_gt:
            return CocoResultsWriter(out, coco_image_ids(coco_gt, paths, ids),
                                     coco_category_ids(coco_gt, class_names, num_classes))
        return CocoResultsWriter(out, {i: k + 1 for k, i in enumerate(ids)}, list(range(1, num_classes + 1)))
    writer = folder_writer(fmt, out, class_names)
    check_file_names(ids, writer.suffix, f"--format {fmt}")
    inputs = {os.path.realpath(p) for p in paths}
    clash = [i for i in ids if os.path.realpath(writer.path_for(i)) in inputs]
    if clash:
        raise OutputError(f"{writer.what} would overwrite the input images (e.g. {writer.path_for(clash[0])}): "
                          "give --out another folder")
    return writer
