"""A stub obeying the model API for inference tests, until (and besides) the real model.

``IdStubModel`` reads objects from the image itself: pixel value ``k / 255`` (k >= 1) belongs to
object ``k``. So it "detects" exactly the objects drawn into whatever view of the image it is
given, and its predictions, mapped back, must equal the drawn objects.
"""
import torch
from torch import nn

from maskrcnn.structures import Instances, MaskList


def object_score(ids: torch.Tensor) -> torch.Tensor:
    """Deterministic, distinct scores for object ids."""
    return 0.3 + 0.69 * ((ids * 37) % 101).float() / 100.0


class IdStubModel(nn.Module):
    def __init__(self, num_classes: int = 3, soft_value: float = 0.9):
        super().__init__()
        self.num_classes = num_classes
        self.soft_value = soft_value
        self.dummy = nn.Parameter(torch.zeros(1))  # so that .to(device) and state_dict work

    def forward(self, images, targets=None):
        out = []
        for im in images:  # a loop over images
            ids = (im[0] * 255).round().long()
            H, W = ids.shape
            k = int(ids.max())
            if k == 0:
                out.append(Instances(
                    (H, W), torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                    MaskList(torch.zeros((0, 1, 1)), torch.zeros((0, 2), dtype=torch.long), (H, W))))
                continue
            present = torch.unique(ids)
            present = present[present > 0]
            dense = ids[None] == present[:, None, None]
            ml = MaskList.from_dense(dense.float() * self.soft_value, pad=1)
            out.append(Instances((H, W), ml.tight_boxes(), present % self.num_classes, object_score(present), ml))
        return out


def draw_objects(masks: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """An image ``[C, H, W]`` with object ``k`` (masks[k - 1], non-overlapping bool) drawn as value k/255."""
    ids = torch.zeros(masks.shape[1:], dtype=torch.float32)
    for k in range(masks.shape[0]):  # test set-up only
        ids[masks[k]] = (k + 1) / 255.0
    return ids[None].repeat(channels, 1, 1)


def random_blobs(n: int, H: int, W: int, seed: int = 0, rmin: int = 2, rmax: int = 6) -> torch.Tensor:
    """``n`` non-overlapping, asymmetric blobs ``bool[n, H, W]`` (a disc with a notch), possibly fewer."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    taken = torch.zeros((H, W), dtype=torch.bool)
    out = []
    for _ in range(n * 4):  # test set-up only
        if len(out) == n:
            break
        r = int(torch.randint(rmin, rmax + 1, (1,), generator=g))
        cy = int(torch.randint(0, H, (1,), generator=g))
        cx = int(torch.randint(0, W, (1,), generator=g))
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & ~((yy < cy) & (xx > cx))  # notch: not symmetric
        m |= (yy == cy) & (xx >= cx) & (xx <= cx + r + 2)  # a tail to the right
        if m.sum() < 3 or (m & taken).any():
            continue
        out.append(m)
        taken |= m
    return torch.stack(out) if out else torch.zeros((0, H, W), dtype=torch.bool)


# A real model small enough for CPU tests (loading, predict.py end to end).
TINY_MODEL = """
model:
  backbone: {name: resnet18, norm: gn, freeze_at: 0, stem_out_channels: 32, res2_out_channels: 32}
  fpn: {out_channels: 32, norm: gn}
  rpn: {pre_nms_topk_test: 100, post_nms_topk_test: 60}
  roi_heads: {num_classes: 3, box_fc_dim: 32, detections_per_image: 50, score_thresh: 0.0}
  mask_head: {num_convs: 1, conv_dim: 32, norm: gn}
  input: {in_channels: 1, pixel_mean: [0.5], pixel_std: [0.25]}
test: {score_thresh: [0.0]}
"""


# A random-weight model for real images: num_classes 1 and 3 input channels (DSB2018 PNGs are RGBA);
# with every threshold at 0 it returns its 50 best random detections, so post-processing has work.
TINY_RGB_MODEL = TINY_MODEL.replace("num_classes: 3", "num_classes: 1").replace(
    "input: {in_channels: 1, pixel_mean: [0.5], pixel_std: [0.25]}",
    "input: {in_channels: 3, pixel_mean: [0.2, 0.2, 0.2], pixel_std: [0.25, 0.25, 0.25]}")


def save_tiny_checkpoint(path, model_yaml: str = TINY_MODEL, seed: int = 0):
    """Write a trainer-style checkpoint (``{"model", "config", "iteration"}``) of a random tiny model
    built from ``model_yaml`` to ``path``; returns ``(model, cfg)``."""
    import os

    from maskrcnn.config import load_config, to_dict
    from maskrcnn.model import build_model

    yaml_path = os.path.splitext(str(path))[0] + ".yaml"
    with open(yaml_path, "w") as f:
        f.write(model_yaml)
    cfg = load_config(yaml_path)
    torch.manual_seed(seed)
    model = build_model(cfg.model, load_weights=False, verbose=False).eval()
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "iteration": 7}, str(path))
    return model, cfg
