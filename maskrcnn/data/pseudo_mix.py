"""Pseudo-labelled images mixed into a training split (semi-supervised training).

A pseudo-labelled dataset is a dataset cache (``maskrcnn.formats.dataset_cache``, ``.npz``) written by
``python -m maskrcnn pseudo_label``: each image holds the teacher's confident cells as ordinary
instances and its uncertain detections as ignore regions (label ``IGNORE_LABEL`` = -1, which the
model takes no loss from). ``data.pseudo.path`` names it (the file, or the folder the tool wrote
it to); ``data.pseudo.ratio`` sets the share of pseudo-labelled images in each epoch.

``MixedReader`` presents the labelled split and the pseudo-labelled set as one reader, with the
labelled (or the pseudo-labelled) images repeated to reach the ratio. Its indices are distinct
for every repeat, so each repeat of an image is augmented differently.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

from maskrcnn.errors import UserError
from maskrcnn.structures import Sample

PSEUDO_FILE = "pseudo_labels.npz"  # the file name the tool writes inside its --out folder
SUMMARY_FILE = "summary.json"


class PseudoDataError(UserError, ValueError):
    """A bad ``data.pseudo`` setting or file; the message names it."""


def pseudo_path(path: str) -> str:
    """The cache file of ``data.pseudo.path``: the path itself, or ``<path>/pseudo_labels.npz`` for a folder."""
    p = os.path.join(path, PSEUDO_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise PseudoDataError(f"data.pseudo.path: no pseudo-labelled dataset at {p} "
                              f"(write one with python -m maskrcnn pseudo_label)")
    return p


def mix_repeats(num_labeled: int, num_pseudo: int, ratio: float) -> Tuple[int, int]:
    """``(labelled repeats, pseudo repeats)`` per epoch so that pseudo images make up about
    ``ratio`` of it: the smaller side is repeated a whole number of times (``ratio`` 0: once each).

    >>> mix_repeats(100, 300, 0.5)
    (3, 1)
    >>> mix_repeats(100, 50, 0.5)
    (1, 2)
    """
    if not 0.0 <= ratio < 1.0:
        raise PseudoDataError(f"data.pseudo.ratio must be in [0, 1), got {ratio}")
    if ratio == 0.0 or num_labeled == 0 or num_pseudo == 0:
        return 1, 1
    natural = num_pseudo / (num_labeled + num_pseudo)
    if ratio <= natural:  # repeat the labelled images
        return max(1, round(num_pseudo * (1.0 - ratio) / (ratio * num_labeled))), 1
    return 1, max(1, round(ratio * num_labeled / ((1.0 - ratio) * num_pseudo)))


class MixedReader:
    """The images ``labeled_indices`` of ``labeled`` (repeated ``repeats[0]`` times) followed by every
    image of ``pseudo`` (repeated ``repeats[1]`` times), as one reader (``load``, ``image_ids``,
    ``class_names``, ``strata``).

    Raises:
        PseudoDataError: the two sets have different classes.
    """

    def __init__(self, labeled, labeled_indices: Sequence[int], pseudo, repeats: Tuple[int, int] = (1, 1)):
        if tuple(labeled.class_names) != tuple(pseudo.class_names):
            raise PseudoDataError(f"the pseudo-labelled dataset {getattr(pseudo, 'root', '')} has classes "
                                  f"{tuple(pseudo.class_names)}, the labelled data {tuple(labeled.class_names)}")
        self.labeled, self.pseudo = labeled, pseudo
        self.class_names = tuple(labeled.class_names)
        self._items: List[Tuple[int, int]] = (
            [(0, int(i)) for _ in range(repeats[0]) for i in labeled_indices]
            + [(1, i) for _ in range(repeats[1]) for i in range(len(pseudo))]
        )
        ids = (list(labeled.image_ids), list(pseudo.image_ids))
        self.image_ids = [ids[s][i] for s, i in self._items]
        self.num_labeled = len(labeled_indices) * repeats[0]

    def __len__(self) -> int:
        return len(self._items)

    def strata(self) -> list:
        return ["labelled" if s == 0 else "pseudo" for s, _ in self._items]

    def load(self, index: int) -> Sample:
        source, i = self._items[index]
        sample = (self.labeled if source == 0 else self.pseudo).load(i)
        sample.meta["pseudo"] = bool(source)
        return sample


def build_mixed_reader(labeled, labeled_indices: Sequence[int], pseudo_cfg, class_agnostic: bool = False):
    """``MixedReader`` of the labelled split and ``pseudo_cfg`` (``data.pseudo``), with the
    pseudo-labelled classes mapped to the labelled reader's class order."""
    from maskrcnn.formats.dataset_cache import CacheDataset

    path = pseudo_path(pseudo_cfg.path)
    try:
        pseudo = CacheDataset(path, class_agnostic=class_agnostic, classes=tuple(labeled.class_names))
    except ValueError as e:
        raise PseudoDataError(f"data.pseudo.path: {e}") from None
    repeats = mix_repeats(len(labeled_indices), len(pseudo), pseudo_cfg.ratio)
    return MixedReader(labeled, labeled_indices, pseudo, repeats)
