"""``predict.py``'s run: a folder of images -> ``submission.csv`` (or another ``--format``:
``maskrcnn.inference.outputs``), with a timing summary. Its command line is ``maskrcnn.cli.predict``;
the Python API (``maskrcnn.api``) and the Dask collection (``maskrcnn.scale``) build their models
and write their outputs with the functions here.

The run has three parts, each a function: list the images (``list_images``, ``image_ids``: the
checks that need no model; flat or DSB2018 folders), predict them one at a time
(``predict_images``: read, predict, post-process), and write what comes out
(``write_predictions``: the writer of ``--format``; the Kaggle CSVs are validated as Kaggle would
and written atomically).
``run_predict`` wires them to the arguments; ``resolve_test_config`` gathers the test settings from the
checkpoint, a thresholds file and the command line.

Everything that can be checked is checked before the first image is predicted
(``check_arguments``: the output path, the image folder and ids, the test settings, TTA views and
``--min-views``, the device; then each checkpoint: readable, finite, fitting its config, and the
thresholds against its classes; no output is one of the inputs). An image that cannot be read or
processed (unsupported, too large for memory: ``maskrcnn.inference.guard``) does not stop the run:
it gets an empty row (the submission still lists every id), a warning and a line in the end-of-run summary
names it, and the exit code is 3 (``EXIT_SKIPPED``) instead of 0; ``--strict`` stops the run at
that image instead (exit 2, nothing written).

Works offline and without a compiler: the ops use the compiled extension when it imports and
their pure-PyTorch twins otherwise (``maskrcnn.ops``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from maskrcnn.config import (
    Config,
    ConfigError,
    TestConfig,
    apply_thresholds,
    check_class_counts,
    override_test_config,
    reject_repeated_keys,
    split_predict_overrides,
)
from maskrcnn.data.image_folders import list_image_files
from maskrcnn.formats.image_files import read_image_with_depth
from maskrcnn.device import resolve_device
from maskrcnn.errors import UserError
from maskrcnn.fileio import check_not_input, check_output_path
from maskrcnn.inference.caps import cap_warning, caps_summary
from maskrcnn.inference.checkpoint import load_model
from maskrcnn.inference.guard import check_fits, predict_guarded
from maskrcnn.inference.input_control import input_overrides, is_dim, normalize_16bit
from maskrcnn.inference.filtering import filter_predictions
from maskrcnn.inference.predictor import Predictor, build_predictor, check_min_views
from maskrcnn.inference.outputs import (DEFAULT_OUT, FOLDER_FORMATS, SubmissionWriter, Writer, build_writer,
                                        model_class_names)
from maskrcnn.inference.tile_grid import auto_tile_size
from maskrcnn.inference.tta import parse_tta
from maskrcnn.inference.zoo import resolve_weights, thresholds_beside
from maskrcnn.progress import progress_mode, track
from maskrcnn.structures import Instances

AMP_CHOICES = {"none": "", "bf16": "bf16", "fp16": "fp16"}  # --amp value -> Predictor's amp
STAGES = ("read", "model", "merge", "postprocess", "encode")
Timing = Dict[str, float]
EXIT_SKIPPED = 3  # the submission was written, but some images could not be read (empty rows)


class ImageFolderError(UserError, ValueError):
    """An image folder without images, or two files with one id; the message names the folder."""


# ------------------------------------------------------------------------------ images
def list_images(folder: str, limit: int = 0) -> List[str]:
    """Image files directly in ``folder`` (by suffix), or its DSB2018 ``<id>/images/<id>.png``
    (``maskrcnn.data.image_folders``), sorted by name; the first ``limit`` (0: all)."""
    paths = list_image_files(folder)
    return paths[:limit] if limit > 0 else paths


def image_id(path: str) -> str:
    """Kaggle's id of an image file: its name without the suffix."""
    return os.path.splitext(os.path.basename(path))[0]


def image_ids(paths: Sequence[str]) -> List[str]:
    """The ids of ``paths``; ImageFolderError when two files share one (``a.png`` and ``a.tif``)."""
    ids = [image_id(p) for p in paths]
    seen: Dict[str, str] = {}
    for i, p in zip(ids, paths):
        if i in seen:
            raise ImageFolderError(f"several images share the id {i!r} (file name without suffix): "
                                   f"{os.path.basename(seen[i])} and {os.path.basename(p)} ({os.path.dirname(p)})")
        seen[i] = p
    return ids


# --------------------------------------------------------------------------- predicting
def predict_images(predictor: Predictor, paths: Sequence[str], test_cfg: TestConfig,
                   progress: bool = True, strict: bool = False, every: float = 30.0,
                   input_cfg=None, normalize: str = "model",
                   ) -> Iterator[Tuple[str, Optional[Instances], Timing]]:
    """Read, predict and post-process each image in turn.

    ``progress``: a tqdm bar on a terminal (else lines), or (False) a line with the ETA every
    ``every`` seconds (``maskrcnn.progress``); over the images, and over the tiles of a tiled one.
    ``input_cfg`` (the first model's ``Config``) and ``normalize`` (``--normalize``): 16-bit images
    for a model trained on 8-bit data (``maskrcnn.inference.input_control``).
    An image that reached a detection cap gets a warning (``maskrcnn.inference.caps``) and its
    timing the ``caps`` reached.

    Yields:
        ``(image id, final Instances (bool masks, no overlaps), seconds per stage)`` per image, the
        stages being ``read``, ``model``, ``merge``, ``filter_predictions`` and ``total``. An image that
        cannot be read yields ``(image id, None, {"skipped": reason, "path": path})`` after a
        warning naming it, unless ``strict``: then its error is raised.
    """
    ids = image_ids(paths)
    mode = progress_mode(not progress)
    predictor.tile_progress = mode
    noted = [False]
    for path, iid in track(list(zip(paths, ids)), "predict", mode=mode, every=every):
        stamps: List[float] = []

        def one_image(path=path, iid=iid):
            stamps.append(time.perf_counter())
            image, depth = read_image_with_depth(path)
            if depth == 16 and input_cfg is not None:
                image, note = _input_16bit(image, iid, input_cfg, normalize, noted[0])
                noted[0] = noted[0] or bool(note)
                if note:
                    _warn(note)
            stamps.append(time.perf_counter())
            check_fits(image, predictor, path)
            predictor.tile_desc = f"{iid}: tiles"
            raw = predictor.predict_raw(image)
            stamps.append(time.perf_counter())
            final = filter_predictions(raw, test_cfg)
            stamps.append(time.perf_counter())
            return final

        final, reason = predict_guarded(one_image, path, strict)
        if reason is not None:  # unreadable, unsupported or too large: an empty row, the run goes on
            from tqdm import tqdm

            tqdm.write(f"warning: skipped, no masks written for it (an empty row in a CSV): {reason}", file=sys.stderr)
            yield iid, None, {"skipped": reason, "path": path}
            continue
        t0, t1, t2, t3 = stamps
        timing = {"read": t1 - t0, "model": predictor.last_timing.get("model", t2 - t1),
                  "merge": predictor.last_timing.get("merge", 0.0), "postprocess": t3 - t2, "total": t3 - t0}
        tiles = getattr(predictor, "last_tiles", None)
        caps = getattr(predictor, "last_caps", [])
        if caps:
            _warn(cap_warning(iid, caps, tiled=tiles is not None, tile_size=tiles[0] if tiles else 0))
            timing["caps"] = [h.key for h in caps]
        yield iid, final, timing


def _warn(text: str) -> None:
    """A warning line on stderr that does not break a tqdm bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def _input_16bit(image, iid: str, cfg, normalize: str, noted: bool):
    """A 16-bit image for the model of ``cfg`` under ``--normalize``, and a note (or "")."""
    if normalize == "model" and cfg.model.input.normalize == "none":
        note = "" if noted else (
            f"note: {iid} is a 16-bit image and the model was trained on 8-bit data (model.input.normalize: "
            f"none): 16-bit images are normalised by their {cfg.model.input.percentile_low:g}-"
            f"{cfg.model.input.percentile_high:g} percentiles (--normalize none: as read, / 65535)")
        return normalize_16bit(image, cfg), note
    if normalize == "none" and is_dim(image):
        return image, (f"warning: {iid}: a 16-bit image using {100 * float(image.max()):.2f}% of its range, "
                       "predicted as read (--normalize none): the model sees it nearly black; "
                       "--normalize percentile (or model) normalises it")
    return image, ""


# ------------------------------------------------------------------------------ writing
def write_predictions(results: Iterable[Tuple[str, Optional[Instances], Timing]], out_path: str,
                      order: str = "row", writer: Optional[Writer] = None) -> List[Timing]:
    """Hand each image's final masks to ``writer`` (``maskrcnn.inference.outputs``; default: the
    Kaggle CSV ``out_path`` in RLE ``order``, validated, written atomically; nothing is written
    when Kaggle would reject the file), then let it finish. An image without Instances (``None``:
    it could not be read) goes to ``writer.skip`` (an empty row in the CSV formats).

    Returns:
        the timings of ``results`` with ``encode`` (the writer's time) added (and counted in ``total``);
        those of skipped images hold ``skipped`` (the reason) and ``path`` instead.
    """
    writer = writer if writer is not None else SubmissionWriter(out_path, order)
    timings = []
    try:
        for iid, final, timing in results:
            if final is None:
                writer.skip(iid)
                timings.append(timing)
                continue
            t0 = time.perf_counter()
            writer.add(iid, final)
            encode = time.perf_counter() - t0
            timings.append({**timing, "encode": encode, "total": timing["total"] + encode})
        writer.finish()
    except BaseException:
        writer.abort()  # an interrupted or failed run leaves nothing that looks complete
        raise
    return timings


def skipped_summary(timings: Sequence[Timing], out_path: str, limit: int = 10) -> Optional[str]:
    """The end-of-run lines naming the images that could not be read (None when there are none)."""
    skipped = [t for t in timings if "skipped" in t]
    if not skipped:
        return None
    lines = [f"predict: {len(skipped)} image(s) could not be read; none has masks in {out_path} "
             f"(exit code {EXIT_SKIPPED}; --strict stops at the first one instead):"]
    lines += [f"  {os.path.basename(t['path'])}: {t['skipped']}" for t in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return "\n".join(lines)


def timing_summary(timings: Sequence[Timing]) -> str:
    """Mean / median / max seconds per image for each stage, as a small table."""
    timings = [t for t in timings if "skipped" not in t]
    lines = [f"timing over {len(timings)} image(s), seconds per image:",
             f"  {'stage':<12}{'mean':>9}{'median':>9}{'max':>9}"]
    for stage in STAGES + ("total",):
        vals = [t[stage] for t in timings] or [0.0]
        lines.append(f"  {stage:<12}{statistics.fmean(vals):9.3f}{statistics.median(vals):9.3f}{max(vals):9.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- arguments
def resolve_test_config(args: argparse.Namespace, base: TestConfig) -> TestConfig:
    """``base`` (the first checkpoint's test section) with ``--thresholds``, ``--set`` and the
    ``--tta`` / ``--min-views`` / ``--merge-iou`` / ``--tile`` / ``--tile-overlap`` options applied,
    in that order."""
    test_cfg = apply_thresholds(base, args.thresholds) if args.thresholds else base
    if args.set:  # model.* keys go to the models (model_overrides); here they are only checked
        reject_repeated_keys(args.set)
        test_over, _ = split_predict_overrides(args.set)
        if test_over:
            test_cfg = override_test_config(test_cfg, test_over, source="--set")
    cli = {}
    if args.tta is not None:
        cli["tta"] = [] if args.tta.strip().lower() == "none" else [s for s in args.tta.split(",") if s.strip()]
    if args.min_views is not None:
        cli["tta_min_views"] = args.min_views
    if args.merge_iou is not None:
        cli["merge_iou"] = args.merge_iou
    if args.tile is not None or getattr(args, "no_tile", False):
        cli["tile_size"] = args.tile or 0
    if args.tile_overlap is not None:
        cli["tile_overlap"] = args.tile_overlap
    return override_test_config(test_cfg, cli, source="command line") if cli else test_cfg


def resolve_weight_files(args: argparse.Namespace) -> Optional[str]:
    """Turn ``--weights`` (paths or model zoo names, ``maskrcnn.inference.zoo``) into files and,
    without ``--thresholds``, take the tuned thresholds beside the first weights
    (``A.pth`` -> ``A.thresholds.yaml``) as ``args.thresholds``; an explicit ``--thresholds`` wins.

    Returns:
        the line to log naming the thresholds file applied, or None when there is none.
    """
    args.weights = [resolve_weights(w) for w in args.weights]
    if args.thresholds:
        return f"predict: thresholds from {args.thresholds} (--thresholds)"
    args.thresholds = thresholds_beside(args.weights[0])
    return f"predict: thresholds from {args.thresholds} (beside the weights)" if args.thresholds else None


def check_same_classes(weights: Sequence[str], cfgs) -> None:
    """ConfigError unless every checkpoint of an ensemble has the first one's classes (count and
    names): merging their views would otherwise mix two label spaces."""
    first = (cfgs[0].model.roi_heads.num_classes, model_class_names(cfgs[0].data))
    for w, c in zip(weights[1:], cfgs[1:]):
        other = (c.model.roi_heads.num_classes, model_class_names(c.data))
        if other[0] != first[0] or (first[1] and other[1] and list(first[1]) != list(other[1])):
            raise ConfigError(f"an ensemble must agree on its classes: {weights[0]} has {first[0]} {first[1] or ''}, "
                              f"{w} has {other[0]} {other[1] or ''} (--weights)")


def model_overrides(args: argparse.Namespace) -> List[str]:
    """The predict-time ``model.*`` items of ``--set`` (``PREDICT_MODEL_KEYS``), for ``load_model``."""
    return split_predict_overrides(getattr(args, "set", None) or [])[1]


def load_models(args: argparse.Namespace, device) -> Tuple[list, list, str]:
    """Each ``--weights`` checkpoint as a model with the ``--set`` model keys and the input options
    (``--normalize``, ``--diameter``, ``--scale``) applied; returns ``(models, configs, input line)``."""
    over = model_overrides(args)
    models, cfgs, text = [], [], ""
    for w in args.weights:
        model, cfg = load_model(w, device, args.config, overrides=over)
        extra, line = input_overrides(cfg, getattr(args, "normalize", "model"), getattr(args, "diameter", None),
                                      getattr(args, "scale", None), source=w)
        if extra:  # rebuilt from the resolved config with the input changes
            model, cfg = load_model(w, device, cfg, overrides=extra)
        models.append(model)
        cfgs.append(cfg)
        text = text or line
    return models, cfgs, text


def auto_tiling(args: argparse.Namespace, test_cfg: TestConfig, cfg) -> Tuple[int, int]:
    """``(tile, limit)`` of automatic tiling (``auto_tile_size``), or ``(0, 0)``: ``--no-tile``,
    ``--tile N`` or a ``test.tile_size`` in the config choose instead."""
    if getattr(args, "no_tile", False) or args.tile is not None or test_cfg.tile_size:
        return 0, 0
    return auto_tile_size(cfg)


def check_arguments(args: argparse.Namespace) -> List[str]:
    """What can be checked before any checkpoint is read or image predicted; returns the image paths.

    The output path (``check_output_path``), the image folder and its ids, the test settings of
    the command line and the thresholds file (ranges, on the default test settings: the
    checkpoint's own are applied later), the TTA views and ``--min-views`` against the number of
    views the command line asks for, the device, and the weights (files or zoo names;
    ``resolve_weight_files``: also the thresholds beside them).
    """
    args.out = DEFAULT_OUT[args.format] if args.out is None else args.out
    folder = args.format in FOLDER_FORMATS
    # a folder format: the file to check is one inside it
    check_output_path(os.path.join(args.out, "label.png") if folder and args.out else args.out, "--out")
    paths = list_images(args.images, args.limit)
    image_ids(paths)
    check_not_input(args.out, [args.images, *paths, *args.weights, args.config, args.thresholds, args.coco_gt],
                    "--out", folder=folder)
    early = resolve_test_config(args, TestConfig())
    views = parse_tta(early.tta)
    if args.tta is not None and args.min_views is not None:  # else the checkpoint's test.tta decides
        check_min_views(args.min_views, len(args.weights), len(views))
    resolve_device(args.device, key="--device")
    given = args.thresholds
    args.thresholds_note = resolve_weight_files(args)
    if args.thresholds and not given:  # found beside the weights: checked as --thresholds was above
        resolve_test_config(args, TestConfig())
    return paths


def load_predictor(args: argparse.Namespace, device) -> Tuple[Predictor, TestConfig, List[Config]]:
    """The models of ``args.weights`` (files: ``resolve_weight_files``) on ``device``, the test settings
    (``resolve_test_config`` on the first checkpoint's) checked against every model's classes, and
    their Predictor; predict.py's and the Python API's (``maskrcnn.api``) one way to build them.

    Returns:
        ``(predictor, test settings, the checkpoints' configs)``.
    """
    models, cfgs, args.input_note = load_models(args, device)
    test_cfg = resolve_test_config(args, cfgs[0].test)
    for w, c in zip(args.weights, cfgs):
        check_class_counts(test_cfg, c.model.roi_heads.num_classes, source=w)
    check_same_classes(args.weights, cfgs)
    args.auto_tile = auto_tiling(args, test_cfg, cfgs[0])
    # Merging and post-processing run where the models run; only encoding needs the CPU.
    predictor = build_predictor(list(models), test_cfg, device=device, batch_size=args.batch_size,
                                output_device=device, amp=AMP_CHOICES[args.amp], auto_tile=args.auto_tile)
    return predictor, test_cfg, list(cfgs)


def run_predict(args: argparse.Namespace) -> int:
    """predict.py's run once its arguments are parsed (``maskrcnn.cli.predict``): check them, load the
    models, predict every image, write the outputs; returns the exit code (``finish_run``)."""
    paths = check_arguments(args)
    device = resolve_device(args.device, key="--device")
    predictor, test_cfg, cfgs = load_predictor(args, device)
    writer = build_writer(args.format, args.out, args.order, paths, image_ids(paths), coco_gt=args.coco_gt,
                          class_names=model_class_names(cfgs[0].data), num_classes=cfgs[0].model.roi_heads.num_classes)
    print(f"predict: {len(paths)} image(s), {len(predictor.models)} model(s) x {len(predictor.views)} view(s) "
          f"on {device}", file=sys.stderr)
    if args.thresholds_note:
        print(args.thresholds_note, file=sys.stderr)
    auto = args.auto_tile
    tiling = (f"tiles of {test_cfg.tile_size} px for images longer than that" if test_cfg.tile_size
              else f"automatic, tiles of {auto[0]} px for images longer than {auto[1]} px or longer than "
                   f"{auto[0]} px and reaching a detection cap" if auto[0] else "off, every image whole")
    print(f"predict: input: {args.input_note}; tiling: {tiling}", file=sys.stderr)
    results = predict_images(predictor, paths, test_cfg, progress=not args.no_progress, strict=args.strict,
                             input_cfg=cfgs[0], normalize=args.normalize)
    timings = write_predictions(results, args.out, writer=writer)
    return finish_run(timings, writer)


def finish_run(timings: List[Dict], writer) -> int:
    """The end of a prediction run (predict.py, ``python -m maskrcnn scale collection``): the timing
    table, the caps reached (``timing["caps"]``: cap keys), what was written, the images skipped;
    returns the exit code (``EXIT_SKIPPED`` when some were)."""
    print(timing_summary(timings))
    capped = {str(i): t["caps"] for i, t in enumerate(timings) if t.get("caps")}
    if capped:
        print(caps_summary(capped, len(timings)), file=sys.stderr)
    print(f"wrote {writer.written}")
    skipped = skipped_summary(timings, writer.written)
    if skipped:
        print(skipped, file=sys.stderr)
        return EXIT_SKIPPED
    return 0
