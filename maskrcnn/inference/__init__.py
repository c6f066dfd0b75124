"""Inference: loading checkpoints, TTA views, mask-level merging of views and models, post-processing,
Kaggle CSV files (submissions and labels), and predict.py's run over image files (``predict_run``;
its command line is ``maskrcnn.cli.predict``)."""
from maskrcnn.inference.merge import merge_instances
from maskrcnn.inference.postprocess import postprocess
from maskrcnn.inference.checkpoint import load_model
from maskrcnn.inference.predictor import Predictor, build_predictor
from maskrcnn.inference.tta import View, parse_tta

__all__ = ["Predictor", "View", "build_predictor", "load_model", "merge_instances", "parse_tta", "postprocess"]
