"""The predictor merges views at the mask IoU it is given (the mask stage's own threshold).

Two models see one cell, the second 2 px to the right: 10 x 10 squares overlapping on 8 x 10
pixels, mask IoU 80 / 120 = 0.667. Merged into one instance below that threshold, kept apart above.
"""
import pytest
import torch
from torch import nn

from maskrcnn.inference.predictor import Predictor
from maskrcnn.structures import Instances, MaskList


class _OneSquare(nn.Module):
    def __init__(self, x0: int):
        super().__init__()
        self.x0 = x0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        out = []
        for im in images:
            H, W = im.shape[-2:]
            dense = torch.zeros(1, H, W)
            dense[0, 5:15, self.x0:self.x0 + 10] = 0.9
            ml = MaskList.from_dense(dense)
            out.append(Instances((H, W), ml.tight_boxes(), torch.zeros(1, dtype=torch.long), torch.tensor([0.8]), ml))
        return out


@pytest.mark.parametrize("merge_iou, count", [(0.6, 1), (0.65, 1), (0.7, 2), (0.8, 2)])
def test_views_merge_by_the_given_mask_iou(merge_iou, count):
    pred = Predictor([_OneSquare(5), _OneSquare(7)], merge_iou=merge_iou, device="cpu")
    raw = pred.predict_raw(torch.zeros(1, 24, 30))
    assert len(raw) == count
