"""Train Mask R-CNN, or evaluate a checkpoint.

    python train.py CONFIG.yaml [--resume | --overwrite] [--set key=value ...]
    python train.py CONFIG.yaml --eval-only WEIGHTS.pth [--eval-out metrics.json] [--set key=value ...]

Multi-GPU / multi-node: ``torchrun --nproc_per_node=N train.py CONFIG.yaml`` (``torchrun`` sets
RANK/WORLD_SIZE/LOCAL_RANK; each process drives one GPU; only rank 0 writes files).

``--eval-only`` validates WEIGHTS on the config's validation split as training does (same split,
post-processing, device and precision) and prints the Kaggle mAP per class and IoU threshold and
COCO mask/box AP; it takes no run directory and writes nothing but ``--eval-out``.
"""
import sys

from maskrcnn.engine.train_cli import main  # noqa: F401 (tests and callers use train.main)

if __name__ == "__main__":
    sys.exit(main())
