"""What a Dask worker needs to predict: the model, loaded once per worker process.

A ``ModelSpec`` is small and picklable (checkpoint paths and settings, no weights); tasks carry it,
and ``predictor_for(spec)`` builds the ``Predictor`` on a worker's first task and keeps it for the
next ones (a cache per process, keyed by the spec), so a worker reads the checkpoints once however
many blocks or images it runs. The Predictor is built exactly as ``predict.py`` builds it
(``load_model`` per checkpoint, ``build_predictor`` of the resolved test settings), which is why a
collection's outputs are byte-identical to ``predict.py``'s.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from maskrcnn.config import TestConfig
from maskrcnn.inference.predictor import Predictor, build_predictor

_CACHE: Dict["ModelSpec", Predictor] = {}


@dataclass(frozen=True)
class ModelSpec:
    """How to build the Predictor on a worker.

    Attributes:
        weights: checkpoint paths (several = an ensemble); read with ``load_model(path, device, config)``.
        config: YAML config for bare state dicts (``predict.py --config``), or None.
        test: the resolved test settings (``predict_run.resolve_test_config``).
        device, batch_size, amp: as ``predict.py``'s options.
        threads: torch CPU threads per worker process.
        factory: instead of ``weights``, a picklable top-level function returning the models (tests).
    """

    weights: Tuple[str, ...] = ()
    config: Optional[str] = None
    test: TestConfig = TestConfig()
    device: str = "cpu"
    batch_size: int = 1
    amp: str = ""
    threads: int = 1
    factory: Optional[Callable[[], Sequence[torch.nn.Module]]] = None
    # predict.py's automatic tiling ``(tile, limit)`` (``predict_run.auto_tiling``), and its model
    # options (``--set model.*``, ``--normalize``, ``--diameter``, ``--scale``) as sorted items
    auto_tile: Tuple[int, int] = (0, 0)
    load_args: Tuple[Tuple[str, object], ...] = ()

    def without_tiles(self) -> "ModelSpec":
        """The same with ``test.tile_size = 0``: a slide's blocks go to the model whole."""
        return dataclasses.replace(self, test=dataclasses.replace(self.test, tile_size=0))


def load_models(spec: ModelSpec):
    """The spec's models (evaluation mode, on its device)."""
    from maskrcnn.device import resolve_device
    from maskrcnn.inference.checkpoint import load_model

    if spec.factory is not None:
        return list(spec.factory())
    device = resolve_device(spec.device, key="--device")
    if spec.load_args:  # exactly as predict.py loads them
        import argparse

        from maskrcnn.inference.predict_run import load_models as cli_load_models

        ns = argparse.Namespace(**{k: list(v) if isinstance(v, tuple) else v for k, v in spec.load_args})
        return list(cli_load_models(ns, device)[0])
    return [load_model(w, device, spec.config)[0] for w in spec.weights]


def predictor_for(spec: ModelSpec) -> Predictor:
    """This process's Predictor of ``spec``: built on the first call, then reused."""
    pred = _CACHE.get(spec)
    if pred is None:
        torch.set_num_threads(max(1, int(spec.threads)))
        from maskrcnn.device import resolve_device

        device = resolve_device(spec.device, key="--device")
        pred = build_predictor(load_models(spec), spec.test, device=device, batch_size=spec.batch_size,
                               output_device=device, amp=spec.amp, auto_tile=spec.auto_tile)
        _CACHE.clear()  # one model set per worker: a new spec replaces the old one
        _CACHE[spec] = pred
    return pred
