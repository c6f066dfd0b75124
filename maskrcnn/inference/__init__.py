"""Inference: loading checkpoints, TTA views, mask-level merging of views and models, filtering
(thresholds, overlaps), Kaggle-valid submissions, and predict.py's run over image files (``predict_run``;
its command line is ``maskrcnn.cli.predict``)."""
from maskrcnn.inference.checkpoint import load_model
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.inference.merge import merge_instances
from maskrcnn.inference.predictor import Predictor, build_predictor
from maskrcnn.inference.tta import View, parse_tta

__all__ = ["Predictor", "View", "build_predictor", "load_model", "merge_instances", "parse_tta", "filter_predictions"]
