"""Predict a folder of images and write a Kaggle submission.csv (see docs/kaggle.md).

    python predict.py --weights A.pth [B.pth ...] --images DIR --out submission.csv \
        [--tta hflip,vflip,rot90,scale=1.25] [--thresholds tuned.yaml]
"""
import sys

from maskrcnn.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
