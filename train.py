"""Train Mask R-CNN, or evaluate a checkpoint: ``python train.py CONFIG.yaml [--resume | --overwrite]
[--eval-only WEIGHTS] [--set key=value ...]`` (also under ``torchrun``). The command line lives in
``maskrcnn.cli.train`` (its docstring and ``--help`` say more)."""
import sys

from maskrcnn.cli.train import main  # noqa: F401 (tests and callers use train.main)

if __name__ == "__main__":
    sys.exit(main())
