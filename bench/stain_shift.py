"""How a model holds up on stains it never saw: Kaggle mAP of the held-out colour images (DSB2018
histology and brightfield) as they are and under fixed colour shifts, for several checkpoints side
by side in one run.

    python -m bench.stain_shift --config configs/dsb2018_cpu.yaml --fold 1 \
        --weights base=output/cv/base/fold1/model_final.pth gray=output/cv/gray/fold1/model_final.pth

The shifts stand in for another lab's staining, which the stage-1 training set does not show:
``channels``: RGB -> BRG (a stain of another hue); ``stain``: haematoxylin x1.4 and eosin x0.6 in
optical density (``maskrcnn.data.transforms.stain_jitter``, Tellez et al. 2018); ``pale``: the
image's contrast against white halved (a faint stain). Predictions as predict.py makes them
without TTA (the checkpoint's test section), scored with the Kaggle metric per domain.
"""
import argparse
import json
import sys
import time


from maskrcnn.api import load_model
from maskrcnn.config import load_config
from maskrcnn.data import build_dataset
from maskrcnn.data.transforms.photometric import stain_jitter
from maskrcnn.evaluation.kaggle import KaggleEvaluator
from maskrcnn.inference.filtering import filter_predictions

SHIFTS = {
    "none": lambda im: im,
    "channels": lambda im: im[[2, 0, 1]] if im.shape[0] == 3 else im,
    "stain": lambda im: stain_jitter(im, (1.4, 0.6, 1.0), (0.0, 0.0, 0.0)),
    "pale": lambda im: 1.0 - 0.5 * (1.0 - im),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--weights", nargs="+", required=True, help="NAME=checkpoint ...")
    p.add_argument("--domains", default="histology,brightfield")
    p.add_argument("--out", default="", help="also write the table as json here")
    a = p.parse_args(argv)
    cfg = load_config(a.config, [f"data.fold={a.fold}"])
    ds = build_dataset(cfg.data, "val")
    keep = set(a.domains.split(","))
    samples = [s for s in (ds[i] for i in range(len(ds))) if s.meta.get("cell_type") in keep]
    print(f"fold {a.fold}: {len(samples)} images ({', '.join(sorted(keep))})", flush=True)
    rows = {}
    for spec in a.weights:
        name, path = spec.split("=", 1)
        model = load_model(path, device="cpu", tta="none")
        for shift, fn in SHIFTS.items():
            t0 = time.perf_counter()
            ev = KaggleEvaluator()
            for s in samples:  # a loop over images
                final = filter_predictions(model.predictor.predict_raw(fn(s.image)), model.test_cfg).to("cpu")  # predict.py's objects
                ev.add(s.image_id, final, s.instances, class_name=s.meta["cell_type"])
            summ = ev.summary()
            rows[(name, shift)] = {"mAP": summ["mAP"], **summ["per_class"]}
            print(f"{name:>10} {shift:>9}: mAP {summ['mAP']:.4f} "
                  + " ".join(f"{k} {v:.4f}" for k, v in sorted(summ["per_class"].items()))
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    names = [s.split("=", 1)[0] for s in a.weights]
    print("\n| shift | " + " | ".join(names) + " |\n| --- |" + " --- |" * len(names))
    for shift in SHIFTS:
        print(f"| {shift} | " + " | ".join(f"{rows[(n, shift)]['mAP']:.4f}" for n in names) + " |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({f"{n}/{s}": v for (n, s), v in rows.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
