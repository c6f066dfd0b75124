"""Many images on a Dask cluster: each worker predicts its images and writes one part file per
image atomically; the outputs are assembled at the end by ``predict.py``'s own writers.

- **Inputs** (``list_inputs``): a folder (exactly ``predict.py``'s list: flat or DSB2018 layout,
  sorted by name), a glob pattern (``'plates/*/*.tif'``, sorted), or a list file (``.txt``: one
  path per line, relative to the list file's folder; blank lines and ``#`` comments skipped; kept
  in its order). Image ids are the file names without suffix and must be unique.
- **Work** (``predict_images_task``): tasks of ``images_per_task`` images; a worker reads,
  predicts and post-processes each image with the Predictor ``predict.py`` builds for the same
  options (``maskrcnn.scale.workers``), and writes ``<work_dir>/parts/<id>.pt`` atomically: the
  final instances (bool masks as crops, boxes, labels, scores) and the timings, or the reason the
  image could not be read. A task that a lost worker left unfinished is run again by Dask on
  another worker; a part already on disk is not predicted again.
- **Resume**: a rerun of the same command skips the images whose part exists (after a crash of
  the client, the cluster, or a ``kill``). ``<work_dir>/run.json`` records the settings (the
  checkpoints' paths, sizes and modification times, the config, the resolved test settings, the
  format's options); a rerun with other settings is refused (``--overwrite`` starts over).
- **Assembly**: the parts are read in input order and handed to ``build_writer``'s writer, as
  ``predict.py`` hands its predictions: the CSV (Kaggle/DSB), COCO json and label images are
  byte-identical to ``predict.py``'s on the same images (tested). An image that could not be read
  gets ``predict.py``'s empty row and exit code 3.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from maskrcnn.errors import UserError
from maskrcnn.fileio import atomic_json, atomic_open
from maskrcnn.scale.workers import ModelSpec, predictor_for
from maskrcnn.structures import Instances, MaskList

PART_SUFFIX = ".pt"
MANIFEST = "run.json"
LIST_SUFFIXES = (".txt", ".lst")


class CollectionError(UserError, ValueError):
    """Inputs or a work folder that cannot be used; the message names the file and what is wrong."""


# ------------------------------------------------------------------------------ inputs
def list_inputs(spec: str, limit: int = 0) -> List[str]:
    """The image paths of ``spec``: a folder, a glob pattern or a list file (see the module doc)."""
    from maskrcnn.inference.predict_run import list_images

    if os.path.isdir(spec):
        return list_images(spec, limit)
    if os.path.isfile(spec) and spec.lower().endswith(LIST_SUFFIXES):
        base = os.path.dirname(os.path.abspath(spec))
        paths = []
        with open(spec) as f:
            for n, line in enumerate(f, 1):  # a loop over the list's lines
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                p = line if os.path.isabs(line) else os.path.join(base, line)
                if not os.path.isfile(p):
                    raise CollectionError(f"{spec}, line {n}: no such image file: {line}")
                paths.append(p)
        if not paths:
            raise CollectionError(f"{spec}: the list file names no image")
    elif any(ch in spec for ch in "*?["):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not paths:
            raise CollectionError(f"no file matches the pattern {spec}")
    else:
        raise CollectionError(f"--images {spec}: not a folder, a list file ({', '.join(LIST_SUFFIXES)}) or a glob pattern "
                              "(quote it: '*.png')")
    return paths[:limit] if limit > 0 else paths


# ------------------------------------------------------------------------------ parts
def part_path(work_dir: str, image_id: str) -> str:
    return os.path.join(work_dir, "parts", image_id + PART_SUFFIX)


def save_part(path: str, iid: str, final: Optional[Instances], timing: Dict) -> None:
    """One image's outcome, atomically: its final instances (or None: skipped) and timings."""
    doc = {"id": iid, "timing": {k: v for k, v in timing.items()}}
    if final is not None:
        m = final.masks.to("cpu")
        doc.update(image_size=list(final.image_size), boxes=final.boxes.cpu(), labels=final.labels.cpu(),
                   scores=final.scores.cpu(), crops=m.crops, origins=m.origins)
    with atomic_open(path, "wb") as f:
        torch.save(doc, f)


def load_part(path: str) -> Tuple[str, Optional[Instances], Dict]:
    """``(image id, final Instances or None, timing)`` of a part file."""
    doc = torch.load(path, map_location="cpu", weights_only=True)
    if "crops" not in doc:
        return doc["id"], None, doc["timing"]
    size = tuple(doc["image_size"])
    inst = Instances(size, doc["boxes"], doc["labels"], doc["scores"], MaskList(doc["crops"], doc["origins"], size))
    return doc["id"], inst, doc["timing"]


def predict_images_task(spec: ModelSpec, work_dir: str, items: Sequence[Tuple[str, str]]) -> int:
    """Predict ``items`` (``(path, image id)``) on this worker, one part file each; returns how many it
    predicted (images whose part already exists are left alone).

    Each image goes through the steps of ``predict_run.predict_images`` (read, the memory check,
    predict, post-process, inside ``guard.predict_guarded``): an image that cannot be read or
    processed gets a part with the reason, as predict.py gives it an empty row."""
    from maskrcnn.formats.image_files import read_image
    from maskrcnn.inference.caps import cap_warning
    from maskrcnn.inference.guard import check_fits, predict_guarded
    from maskrcnn.inference.filtering import filter_predictions

    pred = predictor_for(spec)
    done = 0
    for path, iid in items:  # a loop over this task's images
        out = part_path(work_dir, iid)
        if os.path.exists(out):
            continue
        stamps: List[float] = []
        c0 = time.thread_time()

        def one_image(path=path):
            stamps.append(time.perf_counter())
            image = read_image(path)
            stamps.append(time.perf_counter())
            check_fits(image, pred, path)
            raw = pred.predict_raw(image)
            stamps.append(time.perf_counter())
            final = filter_predictions(raw, spec.test)
            stamps.append(time.perf_counter())
            return final

        final, reason = predict_guarded(one_image, path, strict=False)
        if reason is not None:
            save_part(out, iid, None, {"skipped": reason, "path": path})
            continue
        t0, t1, t2, t3 = stamps
        timing = {"read": t1 - t0, "model": pred.last_timing.get("model", t2 - t1),
                  "merge": pred.last_timing.get("merge", 0.0), "postprocess": t3 - t2,
                  "total": t3 - t0, "cpu": time.thread_time() - c0}
        caps = getattr(pred, "last_caps", [])
        if caps:  # plain strings: parts are read back with weights_only=True
            tiles = getattr(pred, "last_tiles", None)
            timing["caps"] = [h.key for h in caps]
            timing["cap_warning"] = cap_warning(iid, caps, tiled=tiles is not None, tile_size=tiles[0] if tiles else 0)
        save_part(out, iid, final, timing)
        done += 1
    return done


# ------------------------------------------------------------------------------ the run
def manifest(spec: ModelSpec, extra: Dict) -> Dict:
    """The settings a work folder's parts were made with (compared on resume)."""
    def stamp(p):
        st = os.stat(p)
        return {"path": os.path.abspath(p), "bytes": st.st_size, "mtime": int(st.st_mtime)}

    test = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec.test).items()}
    return {"weights": [stamp(w) for w in spec.weights], "config": spec.config and os.path.abspath(spec.config),
            "test": test, "device": spec.device, "batch_size": spec.batch_size, "amp": spec.amp,
            "auto_tile": list(spec.auto_tile), "model_options": {k: v for k, v in spec.load_args if k != "weights"},
            **extra}


def claim_work_dir(work_dir: str, settings: Dict, overwrite: bool = False) -> None:
    """Create ``work_dir`` (or check that its parts were made with ``settings``; ``overwrite``
    removes them instead)."""
    import shutil

    path = os.path.join(work_dir, MANIFEST)
    if os.path.exists(path) and not overwrite:
        with open(path) as f:
            old = json.load(f)
        old_json, new_json = json.loads(json.dumps(old)), json.loads(json.dumps(settings))
        diff = sorted(k for k in set(old_json) | set(new_json) if old_json.get(k) != new_json.get(k))
        if diff:
            raise CollectionError(f"{work_dir} holds the parts of a run with other settings ({', '.join(diff)} differ): "
                                  "give another --work-dir, or --overwrite to start over")
    elif overwrite and os.path.isdir(os.path.join(work_dir, "parts")):
        shutil.rmtree(os.path.join(work_dir, "parts"))
    os.makedirs(os.path.join(work_dir, "parts"), exist_ok=True)
    atomic_json(settings, path)


def run_collection(client, spec: ModelSpec, paths: Sequence[str], ids: Sequence[str], work_dir: str,
                   images_per_task: int = 4, progress: str = "bar") -> Dict[str, int]:
    """Predict every image of ``paths`` whose part is not in ``work_dir`` yet, on ``client``'s cluster.

    Returns ``{"images", "already_done", "predicted"}``.
    """
    from distributed import as_completed

    from maskrcnn.progress import track

    todo = [(p, i) for p, i in zip(paths, ids) if not os.path.exists(part_path(work_dir, i))]
    k = max(1, int(images_per_task))
    groups = [todo[s:s + k] for s in range(0, len(todo), k)]
    futures = [client.submit(predict_images_task, spec, os.path.abspath(work_dir), g, pure=False) for g in groups]
    predicted = 0
    for fut in track(as_completed(futures), desc="predict", total=len(futures), mode=progress, unit="task"):
        predicted += fut.result()
    return {"images": len(paths), "already_done": len(paths) - len(todo), "predicted": predicted}


def assemble(work_dir: str, ids: Sequence[str], writer, progress: str = "bar") -> List[Dict]:
    """Hand every image's part to ``writer`` in input order (as ``predict.py``'s ``write_predictions``)
    and finish it; returns the timings (those of skipped images hold ``skipped`` and ``path``)."""
    from maskrcnn.inference.predict_run import write_predictions
    from maskrcnn.progress import track

    def parts():
        for iid in track(ids, desc="assemble", mode=progress):
            path = part_path(work_dir, iid)
            if not os.path.exists(path):
                raise CollectionError(f"no part file for image {iid} ({path}): rerun the command to predict it")
            pid, final, timing = load_part(path)
            if pid != iid:
                raise CollectionError(f"{path} holds image {pid!r}, not {iid!r}")
            yield iid, final, timing

    return write_predictions(parts(), "", writer=writer)
