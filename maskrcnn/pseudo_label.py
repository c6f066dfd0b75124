"""Pseudo-labelling: a trained model labels a folder of unlabelled images for semi-supervised training.

    python -m maskrcnn pseudo_label label --weights A.pth [B.pth ...] --images DIR --out OUT_DIR \\
        [--ids IDS.json] [--tta hflip] [--keep 0.7] [--ignore 0.3] [--agree N]
    python -m maskrcnn pseudo_label split --split-file FOLDS.json --fold 0 --fraction 0.25 \\
        --labeled LABELED.json --unlabeled UNLABELED.json

``label`` runs the models (several = an ensemble) on every test-time view of each image
(``build_predictor``, the same views and merge as ``predict.py``), merges the views at mask level
(``merge_instances``) and keeps (``maskrcnn.inference.pseudo_selection``):

- cells: fused score ``>= --keep`` and seen in at least ``--agree`` views (default: all of them);
- ignore regions: the other detections with score ``>= --ignore``: the trainer takes no loss from
  anchors and proposals inside them (neither object nor background);
- background: the rest.

It writes ``OUT_DIR/pseudo_labels.npz`` (a dataset cache, ``maskrcnn.formats.dataset_cache``, readable as
``data.format: cache``) and ``OUT_DIR/summary.json`` (images, cells, ignored regions, settings),
both atomically. Train on it next to the labelled data with ``data.pseudo.path: OUT_DIR`` and
``data.pseudo.ratio`` (``maskrcnn.data.pseudo_mix``; docs/semi_supervised.md).

``--images`` is a flat folder of images (Sartorius ``train_semi_supervised``, any folder; ids are
the file names, the Sartorius cell type the name's prefix before ``[``) or a DSB2018 folder
(``<id>/images/<id>.png``; masks, if any, are not read). ``--ids`` keeps only the ids in a json list.
An image that cannot be read or processed (unsupported, too large for memory) is left out with a
warning, named at the end and in ``summary.json`` (``skipped``), and the exit code is 3
(``--strict``: stop at it, exit 2).

``split`` writes the labelled / unlabelled halves of an experiment: a stratified ``--fraction``
of the training folds (every fold but ``--fold``) as labelled ids, the rest as unlabelled ids
(``data.train_ids_file`` takes the first, ``label --ids`` the second).
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from maskrcnn.errors import UserError
from maskrcnn.progress import progress_mode, track

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class PseudoLabelError(UserError, ValueError):
    """A bad argument or input of the pseudo-labelling tool; the message names it."""


# ------------------------------------------------------------------------------ images
class FolderImages:
    """A flat folder of images as unlabelled samples (ids = file names without suffix).

    The cell type (``meta["cell_type"]``) is the Sartorius name prefix before ``[``, else None.
    """

    def __init__(self, folder: str, channels: int):
        self.root = folder
        self.channels = int(channels)
        from maskrcnn.data.image_folders import flat_image_files

        files = [os.path.basename(p) for p in flat_image_files(folder)]  # broken symlinks too: named when read
        if not files:
            raise PseudoLabelError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) and no "
                                   f"DSB2018 <id>/images/<id>.png folders")
        self._files = files
        self.image_ids = [os.path.splitext(f)[0] for f in files]
        dup = sorted({i for i in self.image_ids if self.image_ids.count(i) > 1})
        if dup:
            raise PseudoLabelError(f"--images {folder}: several files share the id {dup[0]!r}")

    def __len__(self) -> int:
        return len(self._files)

    def load(self, index: int):
        from maskrcnn.formats.image_files import read_image
        from maskrcnn.structures import Instances, Sample

        path = os.path.join(self.root, self._files[index])
        image = read_image(path, channels=self.channels)
        name = self._files[index]
        meta = {"path": path, "cell_type": name.split("[", 1)[0] if "[" in name else None, "unlabeled": True}
        return Sample(image, Instances.empty(tuple(image.shape[-2:]), with_masks=True), self.image_ids[index], meta)


def open_images(folder: str, channels: int):
    """The reader of ``--images``: DSB2018 layout (``<id>/images/<id>.png``) or a flat folder."""
    if not os.path.isdir(folder):
        raise PseudoLabelError(f"--images {folder}: no such folder")
    from maskrcnn.formats import dsb_layout

    if dsb_layout.image_files(folder):
        from maskrcnn.data.dsb2018 import DSB2018Dataset

        return DSB2018Dataset(folder, labeled=False, channels=channels)
    return FolderImages(folder, channels)


def select_ids(reader, ids_file: str) -> List[int]:
    """Indices of ``reader`` to label: all, or those whose id is in ``ids_file`` (all must exist)."""
    if not ids_file:
        return list(range(len(reader)))
    from maskrcnn.data.splits import read_ids_file

    try:
        want = read_ids_file(ids_file)
    except ValueError as e:
        raise PseudoLabelError(str(e)) from None
    pos = {i: n for n, i in enumerate(reader.image_ids)}
    missing = [i for i in want if i not in pos]
    if missing:
        raise PseudoLabelError(f"--ids {ids_file}: {len(missing)} ids are not images of --images (e.g. {missing[:3]})")
    return sorted(pos[i] for i in want)


# ------------------------------------------------------------------------------ writing
class PseudoLabelSet:
    """The labelled images as a reader for ``write_cache``: each image re-read from its source,
    with the stored pseudo-labels (cells and ignore regions) as its instances."""

    def __init__(self, source, indices: Sequence[int], instances: Sequence, class_names: Sequence[str],
                 cell_types: Sequence[Optional[str]]):
        self.source = source
        self.root = getattr(source, "root", os.getcwd())
        self._indices = list(indices)
        self._instances = list(instances)
        self._types = [str(t) for t in cell_types]  # the strata: cell type or imaging domain
        self.image_ids = [source.image_ids[i] for i in self._indices]
        self.class_names = tuple(class_names)

    def __len__(self) -> int:
        return len(self._indices)

    def strata(self) -> list:
        return list(self._types)

    def load(self, index: int):
        s = self.source.load(self._indices[index])
        s.instances = self._instances[index].to("cpu")
        s.meta["unlabeled"] = True  # pseudo-labelled: not ground truth (never for validation)
        return s


def class_names_of(cfg, override: str) -> tuple:
    """The class names the model predicts: ``--classes``, else ``data.classes``, else the defaults of
    its training format (DSB2018: nucleus; Sartorius: its three cell types)."""
    k = cfg.model.roi_heads.num_classes
    if override:
        names = tuple(c.strip() for c in override.split(",") if c.strip())
    elif cfg.data.classes:
        names = tuple(cfg.data.classes)
    elif cfg.data.class_agnostic:
        names = ("cell",)
    elif cfg.data.format == "dsb2018":
        from maskrcnn.data.dsb2018 import DSB_CLASSES

        names = DSB_CLASSES
    elif cfg.data.format in ("sartorius", "sartorius_unlabeled"):
        from maskrcnn.data.sartorius import SARTORIUS_CLASSES

        names = tuple(SARTORIUS_CLASSES)
    elif k == 1:
        names = ("cell",)
    else:
        raise PseudoLabelError(f"cannot tell the names of the model's {k} classes (data.format "
                               f"{cfg.data.format!r}, no data.classes): pass --classes a,b,c")
    if len(names) != k:
        raise PseudoLabelError(f"{len(names)} class names {names} for a model with {k} classes")
    return names


def label_images(reader, indices: Sequence[int], predictor, test_cfg, args, agree: int):
    """Pseudo-label ``reader``'s images ``indices`` one at a time; an image that cannot be processed
    (``maskrcnn.inference.guard``) is left out with a warning. Returns the indices done, their
    labels and cell types, the totals, the number without cells and the reasons of those left out."""
    from tqdm import tqdm

    from maskrcnn.inference.guard import check_fits, predict_guarded
    from maskrcnn.inference.merge import merge_instances
    from maskrcnn.inference.pseudo_selection import pseudo_labels

    labels, types, totals = [], [], {"cells": 0, "ignored": 0, "background": 0}
    empty, done, skipped = 0, [], []
    mode = progress_mode(args.no_progress)  # a bar on a terminal, else lines with an ETA
    bar = tqdm(indices, desc="pseudo-label", unit="img") if mode == "bar" else track(indices, "pseudo-label")
    for i in bar:
        where = reader_path(reader, i)

        def one_image(i=i, where=where):
            sample = reader.load(i)
            check_fits(sample.image, predictor, where)
            views = predictor.predict_views(sample.image)
            merged, counts = merge_instances(views, test_cfg.merge_iou, 1, test_cfg.mask_thresh, predictor.num_views,
                                             return_view_counts=True)
            return sample, pseudo_labels(merged, counts, test_cfg, args.keep, args.ignore, agree)

        result, reason = predict_guarded(one_image, where, args.strict)
        if reason is not None:  # left out of the set (nothing to train on), named at the end
            tqdm.write(f"warning: skipped, left out of the pseudo-labels: {reason}", file=sys.stderr)
            skipped.append(reason)
            continue
        sample, (inst, c) = result
        done.append(i)
        labels.append(inst.to("cpu"))
        types.append(sample.meta.get("cell_type"))
        for k in totals:
            totals[k] += c[k]
        empty += c["cells"] == 0
        if mode == "bar":
            bar.set_postfix(cells=totals["cells"], ignored=totals["ignored"])
    return done, labels, types, totals, empty, skipped


def reader_path(reader, index: int) -> str:
    """The file behind ``reader``'s image ``index`` (for messages)."""
    if hasattr(reader, "image_path"):
        return reader.image_path(reader.image_ids[index])
    return os.path.join(reader.root, reader._files[index])

