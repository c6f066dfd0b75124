"""The Python API: three lines in a notebook, with exactly what ``predict.py`` writes.

    from maskrcnn import load_model
    model = load_model("nuclei")        # a model zoo name (MODEL_ZOO.md) or a checkpoint path
    labels = model.segment(image)       # numpy image -> label image [H, W] (0 = background)

``load_model`` builds what ``predict.py`` builds from the same arguments (its parser,
``resolve_weight_files``, ``load_predictor``: the checkpoint's test settings, the tuned thresholds
beside the weights unless others are given, its TTA views), and each call runs predict.py's steps
for one image: the pixels are converted as ``read_image`` converts a file (``image_from_array``),
predicted (``Predictor.predict_raw``) and post-processed (``filter_predictions``), and ``segment`` paints
them as ``--format labels`` does (``to_label_image``). So ``model.segment(np.asarray(Image.open(f)))``
equals the label image ``predict.py --format labels`` writes for ``f``.

What the calls return:

- ``segment(image)``: ``uint16[H, W]`` (``uint32`` past 65535 objects), objects numbered 1..N in
  decreasing score order.
- ``predict(image)``: ``Detections`` (numpy masks, boxes, scores, classes) after that
  post-processing: the score threshold, the mask threshold, hole filling, overlap removal and the
  minimum area of the test settings.
- ``predict_raw(image)``: the merged detections before it, as ``MaskRCNN.predict`` returns them
  (with TTA: merged over the views): every detection above the model's ``roi_heads.score_thresh``,
  soft (probability) masks that may overlap, no minimum area. ``predict(image)`` is
  ``filter_predictions(predict_raw(image))``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from maskrcnn.cli.predict import build_parser
from maskrcnn.config import Config, TestConfig
from maskrcnn.formats.image_files import image_from_array
from maskrcnn.device import resolve_device
from maskrcnn.formats.label_images import to_label_image
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.inference.outputs import model_class_names
from maskrcnn.inference.predict_run import load_predictor, resolve_weight_files
from maskrcnn.inference.predictor import Predictor
from maskrcnn.structures import Instances

MAX_LABEL_32 = 2**32 - 1


@dataclass
class Detections:
    """One image's final objects, sorted by decreasing score (N objects, image H x W).

    Attributes:
        boxes: ``float32[N, 4]`` tight boxes ``x0, y0, x1, y1`` in pixels (x1, y1 exclusive).
        scores: ``float32[N]``.
        classes: ``int64[N]`` class indices into ``class_names``.
        class_names: the model's class names, or None when its config does not name them.
        instances: the same objects as ``maskrcnn.structures.Instances``, masks as crops around each
            object (what predict.py's writers take).
        masks: ``bool[N, H, W]``, one full-image mask per object, made on first access: N * H * W
            bytes (3,500 nuclei on a 3000 x 3000 image: 31 GB; use ``instances`` or ``segment`` there).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_names: Optional[List[str]]
    instances: Instances

    @cached_property
    def masks(self) -> np.ndarray:
        return self.instances.masks.to_dense().numpy()

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class CellModel:
    """A loaded model with its test settings (``load_model``); see the module doc.

    Attributes:
        predictor: the ``Predictor`` (models x TTA views), as predict.py builds it.
        test_cfg: the test settings applied (the checkpoint's, then the thresholds file, then ``tta``).
        config: the first checkpoint's ``Config``.
        weights: the weight files (zoo names resolved).
        thresholds: the thresholds file applied, or None.
    """

    def __init__(self, predictor: Predictor, test_cfg: TestConfig, config: Config, weights: List[str],
                 thresholds: Optional[str]):
        self.predictor, self.test_cfg, self.config = predictor, test_cfg, config
        self.weights, self.thresholds = weights, thresholds
        self.class_names = model_class_names(config.data)

    def __repr__(self) -> str:
        return (f"CellModel({', '.join(self.weights)}; {len(self.predictor.views)} view(s) on {self.predictor.device}; "
                f"thresholds: {self.thresholds or 'the checkpoint config'})")

    @staticmethod
    def image_tensor(image) -> torch.Tensor:
        """``image`` as predict.py reads a file: ``Tensor[C, H, W]`` float32 in [0, 1].

        ``image``: a numpy array (``uint8``, ``uint16``, other integers up to 65535, ``bool``, or
        floats in [0, 1]; ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]``, alpha dropped),
        or a ``PIL.Image`` (converted by its mode, exactly as ``read_image``).
        """
        if isinstance(image, torch.Tensor):
            raise TypeError("segment/predict take a numpy array [H, W] or [H, W, C] (or a PIL image), "
                            "not a torch Tensor: use tensor.numpy() in that layout")
        return image_from_array(image, "image")

    def predict_raw(self, image) -> Instances:
        """The merged detections before post-processing (module doc): Instances with soft masks, on the CPU."""
        return self.predictor.predict_raw(self.image_tensor(image)).to("cpu")

    def predict_instances(self, image) -> Instances:
        """predict.py's final objects of ``image`` as Instances (bool mask crops, tight boxes), on the CPU."""
        raw = self.predictor.predict_raw(self.image_tensor(image))
        return filter_predictions(raw, self.test_cfg).to("cpu")

    def predict(self, image) -> Detections:
        """The final objects of ``image`` (``Detections``; post-processed as predict.py does)."""
        final = self.predict_instances(image)
        return Detections(boxes=final.boxes.float().numpy(),
                          scores=final.scores.float().numpy(), classes=final.labels.numpy(),
                          class_names=self.class_names, instances=final)

    def segment(self, image) -> np.ndarray:
        """The label image of ``image``: ``uint16[H, W]`` (``uint32`` past 65535 objects), 0 background,
        1..N the objects in decreasing score order; ``predict.py --format labels``'s pixels."""
        return to_label_image(self.predict_instances(image), max_label=MAX_LABEL_32)


def load_model(weights: Union[str, Sequence[str]] = "nuclei", device: str = "auto",
               thresholds: Optional[str] = "auto", tta: Union[str, Sequence[str], None] = None,
               config: Optional[str] = None, tile: Optional[int] = None, batch_size: int = 1) -> CellModel:
    """Load a model (or an ensemble) for ``segment`` / ``predict``, set up as ``predict.py`` would be.

    Args:
        weights: a model zoo name (``"nuclei"``), a checkpoint path, or several (an ensemble).
        device: ``"auto"`` (cuda when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        thresholds: ``"auto"``: the tuned thresholds beside the first weights (``A.thresholds.yaml``)
            when there are some; a YAML path (as ``--thresholds``); None: the checkpoint's test settings only.
        tta: views as ``--tta`` (``"hflip,vflip"`` or a list; ``""`` or ``[]``: none); None: the checkpoint's.
        config: a YAML config for bare state dicts (``--config``).
        tile: as ``--tile`` (None: the checkpoint's).
        batch_size: views per model call (``--batch-size``).
    Raises:
        UserError subclasses naming the problem: unknown weights (the message lists the zoo's
        names), an unreadable checkpoint, bad thresholds or TTA views, a device that is not there.
    """
    if int(batch_size) < 1 or (tile is not None and int(tile) < 0):  # argparse would exit: say it here
        raise ValueError(f"batch_size must be at least 1 and tile at least 0, got {batch_size} and {tile}")
    names = [weights] if isinstance(weights, str) else [str(w) for w in weights]
    argv = ["--weights", *names, "--images", "", "--device", str(device), "--batch-size", str(batch_size)]
    if config:
        argv += ["--config", config]
    if tta is not None:
        argv.append("--tta=" + (tta if isinstance(tta, str) else ",".join(tta)))
    if thresholds not in ("auto", None):
        argv += ["--thresholds", str(thresholds)]
    if tile is not None:
        argv += ["--tile", str(int(tile))]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # the parser printed the error line; a notebook must not exit
        raise ValueError(f"load_model: arguments predict.py would refuse: {' '.join(argv)}") from None
    resolve_weight_files(args)
    if thresholds is None:
        args.thresholds = None
    dev = resolve_device(args.device, key="device")
    predictor, test_cfg, cfgs = load_predictor(args, dev)
    return CellModel(predictor, test_cfg, cfgs[0], list(args.weights), args.thresholds)
