"""Weights by name: the model zoo's files, and tuned thresholds found beside a checkpoint.

The zoo is the folder ``maskrcnn/zoo/`` of the package (installed with it as package data); the
environment variable ``MASKRCNN_ZOO`` names another folder instead (tests, a site's own models).
An entry ``<name>`` is its weights ``<name>.pth`` (a checkpoint, fp16 floats, with its config:
``python -m maskrcnn zoo export``), its model card ``<name>.md`` and, optionally, tuned
thresholds ``<name>.thresholds.yaml``.

Every front end that takes weights reads them through ``maskrcnn.inference.checkpoint``, which
calls ``resolve_weights``: a path to an existing file is used as it is; otherwise a zoo name
gives the zoo's file; anything else is one ``WeightsNotFound`` error listing the names.

Tuned thresholds beside the weights (StarDist's ``thresholds.json`` pattern): ``A.pth`` ->
``A.thresholds.yaml`` in the same folder, the schema ``evaluate.py tune`` writes and
``predict.py --thresholds`` reads; ``thresholds_beside`` finds it, ``predict.py`` and the Python
API (``maskrcnn.api``) apply it unless a thresholds file is given explicitly.
"""
from __future__ import annotations

import difflib
import os
from typing import List, Optional

from maskrcnn.errors import UserError

ZOO_ENV = "MASKRCNN_ZOO"
WEIGHTS_SUFFIX = ".pth"
CARD_SUFFIX = ".md"
THRESHOLDS_SUFFIX = ".thresholds.yaml"
# The package's own zoo folder (maskrcnn/zoo/); found by path, not imported (it is a front-end
# level package: its export tool reads checkpoints).
PACKAGE_ZOO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zoo")


class WeightsNotFound(UserError, FileNotFoundError):
    """``--weights X`` where X is neither an existing file nor a zoo name; the message lists the names."""


def zoo_dir() -> str:
    """The zoo folder: ``$MASKRCNN_ZOO`` when set, else the package's ``maskrcnn/zoo/``."""
    return os.environ.get(ZOO_ENV) or PACKAGE_ZOO


def zoo_names() -> List[str]:
    """The names of the zoo's entries (``<name>.pth`` files in ``zoo_dir()``), sorted."""
    folder = zoo_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(f[: -len(WEIGHTS_SUFFIX)] for f in os.listdir(folder)
                  if f.endswith(WEIGHTS_SUFFIX) and os.path.isfile(os.path.join(folder, f)))


def zoo_path(name: str) -> Optional[str]:
    """The weights file of zoo entry ``name``, or None when there is no such entry."""
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name.startswith("."):
        return None
    path = os.path.join(zoo_dir(), name + WEIGHTS_SUFFIX)
    return path if os.path.isfile(path) else None


def resolve_weights(spec: str) -> str:
    """The weights file that ``spec`` names: ``spec`` itself when it is an existing file, else the
    zoo entry of that name.

    A folder is not a file: ``--weights nuclei`` with a folder ``nuclei/`` in the working directory
    still means the zoo entry.

    Raises:
        WeightsNotFound: neither; the message names ``spec``, the zoo folder and its names (and the
            nearest name, for a typo).
    """
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        return spec
    found = zoo_path(spec)
    if found is not None:
        return found
    names = zoo_names()
    if os.path.isdir(spec):
        what = f"checkpoint file expected, got a folder: {spec}"
    else:
        what = f"checkpoint not found: {spec} is neither a file nor a model name"
    near = difflib.get_close_matches(os.path.basename(spec).removesuffix(WEIGHTS_SUFFIX), names, n=1)
    hint = f"; did you mean {near[0]}?" if near else ""
    listed = ", ".join(names) if names else "none yet"
    raise WeightsNotFound(f"{what}{hint} (model names in {zoo_dir()}: {listed})")


def thresholds_beside(weights: str) -> Optional[str]:
    """The tuned thresholds file beside a weights file (``A.pth`` -> ``A.thresholds.yaml``) when it
    exists, else None."""
    base = weights[: -len(WEIGHTS_SUFFIX)] if weights.endswith(WEIGHTS_SUFFIX) else weights
    path = base + THRESHOLDS_SUFFIX
    return path if os.path.isfile(path) else None
