"""Folders of images to predict or draw, in the two layouts users bring (docs/conventions.md):

- flat: image files directly in the folder (Sartorius ``test/``, a microscope's export); the id is
  the file name without its suffix;
- DSB2018: one folder per image, ``<id>/images/<id>.png`` (``stage1_train``, ``stage1_test``);
  the id is the folder name (``<id>/masks/`` may be there or not; it is not read here).

``list_image_files`` takes either; a folder that is neither is one error naming both layouts.
"""
from __future__ import annotations

import os
from typing import List

from maskrcnn.errors import UserError
from maskrcnn.formats import dsb_layout

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class ImageFolderError(UserError, ValueError):
    """A folder that holds no image in either layout; the message names it."""


def flat_image_files(folder: str) -> List[str]:
    """Image files (by suffix) directly in ``folder``, sorted by name.

    A symlink that leads nowhere (broken, or a loop) is listed too: reading it fails, and the
    front ends name it (a warning, the run's summary) instead of dropping it without a word.
    """
    def listed(path: str) -> bool:
        return os.path.isfile(path) or (os.path.islink(path) and not os.path.exists(path))

    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_SUFFIXES) and listed(os.path.join(folder, f))
    )


def is_dsb_layout(folder: str) -> bool:
    """True when ``folder`` holds no image directly but ``<id>/images/<id>.png`` folders."""
    return os.path.isdir(folder) and not flat_image_files(folder) and bool(dsb_layout.image_files(folder))


def list_image_files(folder: str) -> List[str]:
    """The images of ``folder``: files directly in it, else its DSB2018 ``<id>/images/<id>.png``.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ImageFolderError: it holds images in neither layout (the message names both).
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = flat_image_files(folder) or dsb_layout.image_files(folder)
    if not paths:
        raise ImageFolderError(
            f"{folder}: no images: neither image files ({', '.join(IMAGE_SUFFIXES)}) in it nor DSB2018 "
            f"folders <id>/images/<id>.png"
        )
    return paths
