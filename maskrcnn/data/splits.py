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
    """Indices into ``image_ids`` of ``split``: ``train`` (fold != ``fold``), ``val`` (== ``fold``) or ``all``."""
    if split == "all":
        return list(range(len(image_ids)))
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not 0 <= fold < num_folds:
        raise ValueError(f"data.fold={fold} is outside [0, {num_folds}) (data.num_folds={num_folds})")
    want_val = split == "val"
    return [n for n, i in enumerate(image_ids) if (folds[i] == fold) == want_val]
