"""Deterministic, stratified k-fold train/validation splits, stored in a json file and reused.

Within each stratum (Sartorius: cell type; DSB2018: image size, gray/colour and brightness) images
are ordered by a hash of ``(seed, image_id)`` and dealt to folds round-robin, continuing the deal
across strata so that fold sizes differ by at most one. The result depends only on the ids, their
strata, ``num_folds`` and ``seed``, never on the order in which a reader lists the files.

File format (json)::

    {"version": 1, "num_folds": 5, "seed": 0, "folds": {"<image_id>": <fold>, ...},
     "strata": {"<image_id>": "<stratum>", ...}}
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from typing import Dict, Sequence

from maskrcnn.errors import InputError
from maskrcnn.fileio import atomic_json

SPLIT_VERSION = 1


def _key(seed: int, image_id: str) -> str:
    return hashlib.sha1(f"{seed}:{image_id}".encode()).hexdigest()


def make_folds(image_ids: Sequence[str], strata: Sequence[str], num_folds: int, seed: int = 0) -> Dict[str, int]:
    """Assign each id a fold in ``[0, num_folds)``, stratified by ``strata`` (same length as ids)."""
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    if len(image_ids) != len(strata):
        raise ValueError(f"{len(image_ids)} image ids but {len(strata)} strata")
    if len(set(image_ids)) != len(image_ids):
        dup = sorted(i for i, c in Counter(image_ids).items() if c > 1)[:5]
        raise ValueError(f"duplicate image ids (e.g. {dup}); splits need unique ids")
    groups: Dict[str, list] = {}
    for i, s in zip(image_ids, strata):
        groups.setdefault(str(s), []).append(i)
    folds: Dict[str, int] = {}
    deal = 0
    for s in sorted(groups):  # strata in a fixed order, members in hashed order
        for i in sorted(groups[s], key=lambda x: _key(seed, x)):
            folds[i] = deal % num_folds
            deal += 1
    return folds


def load_or_make_folds(path: str, image_ids: Sequence[str], strata_fn, num_folds: int, seed: int = 0) -> Dict[str, int]:
    """Folds from ``path`` if it exists (checked against the dataset), else made and written there.

    ``strata_fn()`` returns the strata of ``image_ids``; it is only called when the file is made
    (computing strata may mean reading every image).  An empty ``path`` makes the folds in memory.

    Raises:
        InputError (a ValueError): the file is unreadable, was made for another ``num_folds``, or lacks some of
            the dataset's ids (the message names the file and a few of the ids).
    """
    if path and os.path.isfile(path):
        try:
            with open(path) as f:
                doc = json.load(f)
            folds = {str(k): int(v) for k, v in doc["folds"].items()}
            file_k = int(doc["num_folds"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"split file {path}: cannot read it ({type(e).__name__}: {e})") from None
        if file_k != num_folds:
            raise InputError(f"split file {path} holds {file_k} folds but the config asks for {num_folds}; "
                             f"delete the file or set data.num_folds={file_k}")
        missing = [i for i in image_ids if i not in folds]
        if missing:
            raise InputError(f"split file {path} lacks {len(missing)} of the dataset's {len(image_ids)} images "
                             f"(e.g. {missing[:3]}); it was made for another dataset: delete it or set another data.split_file")
        return {i: folds[i] for i in image_ids}
    strata = list(strata_fn())
    folds = make_folds(image_ids, strata, num_folds, seed)
    if path:
        doc = {"version": SPLIT_VERSION, "num_folds": num_folds, "seed": seed, "folds": folds,
               "strata": dict(zip(image_ids, map(str, strata)))}
        atomic_json(doc, path)
    return folds


def split_indices(folds: Dict[str, int], image_ids: Sequence[str], split: str, fold: int, num_folds: int) -> list:
    """Indices into ``image_ids`` of ``split``: ``train`` (fold != ``fold``), ``val`` (== ``fold``) or ``all``.

    ``fold=-1`` holds nothing back: ``train`` is every image and ``val`` is empty."""
    if split == "all":
        return list(range(len(image_ids)))
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if fold == -1:  # data.fold: -1 trains on every image and holds none back (a model to ship)
        return list(range(len(image_ids))) if split == "train" else []
    if not 0 <= fold < num_folds:
        raise ValueError(f"data.fold={fold} is outside [0, {num_folds}) (data.num_folds={num_folds})")
    want_val = split == "val"
    return [n for n, i in enumerate(image_ids) if (folds[i] == fold) == want_val]


def read_ids_file(path: str) -> list:
    """The image ids in ``path``: a json list of strings or ``{"ids": [...]}`` (``write_ids_file``).

    Raises:
        ValueError: the file is missing, unreadable, not such a list, or holds duplicates.
    """
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"ids file {path}: cannot read it ({type(e).__name__}: {e})") from None
    ids = doc.get("ids") if isinstance(doc, dict) else doc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"ids file {path}: expected a json list of image id strings or {{\"ids\": [...]}}")
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, c in Counter(ids).items() if c > 1)[:3]
        raise ValueError(f"ids file {path}: duplicate ids (e.g. {dup})")
    return ids


def write_ids_file(path: str, ids: Sequence[str], **meta) -> None:
    """Write ``{"ids": [...], **meta}`` atomically (``meta``: how the ids were chosen)."""
    atomic_json({"ids": [str(i) for i in ids], **meta}, path)


def restrict_to_ids(indices: Sequence[int], image_ids: Sequence[str], keep: Sequence[str], path: str = "") -> list:
    """The ``indices`` (into ``image_ids``) whose id is in ``keep``; every id of ``keep`` must be
    among them (an id outside the split is an error naming ``path``, the ids file)."""
    present = {image_ids[n]: n for n in indices}
    missing = [i for i in keep if i not in present]
    if missing:
        raise ValueError(f"ids file {path} names {len(missing)} images that are not in the training split "
                         f"(e.g. {missing[:3]}): validation images or another dataset's ids")
    want = set(keep)
    return [n for n in indices if image_ids[n] in want]


def labeled_subset(folds: Dict[str, int], strata: Dict[str, str], val_fold: int, fraction: float,
                   seed: int = 0) -> tuple:
    """``(labelled ids, unlabelled ids)``, sorted: a stratified ``fraction`` of the training images
    (fold != ``val_fold``) and the rest, for semi-supervised experiments.

    The training images are dealt round-robin (``make_folds``) into ``round(1 / fraction)`` parts,
    stratified by ``strata`` (missing: one stratum), and the first part is the labelled one; the
    result depends only on the ids, strata, ``fraction`` and ``seed``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    train = sorted(i for i, f in folds.items() if int(f) != int(val_fold))
    parts = max(2, round(1.0 / fraction))
    part = make_folds(train, [str(strata.get(i, "")) for i in train], parts, seed)
    return [i for i in train if part[i] == 0], [i for i in train if part[i] != 0]
