"""The small structures that flow between stages, and box maths.

- ``ImageList``: a batch of images padded to one size, with each image's true size.
- ``MaskList``: N instance masks of one image, each stored as a crop around the object
  (bool for ground truth and final predictions, float in [0, 1] for soft predictions).
  Cells are small, so a crop costs a few hundred pixels where a full-image mask costs 366k.
- ``Instances``: boxes, labels and optionally scores and masks of one image.

Conventions (docs/conventions.md): boxes are ``x1, y1, x2, y2`` floats in absolute
pixels of the image they refer to, no ``+1``; pixel ``i`` covers ``[i, i + 1)``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

Index = Union[int, slice, Tensor, Sequence[int]]

# The label of an ignore region in training ground truth (an uncertain pseudo-label): the model
# takes no loss from anchors and proposals inside it (maskrcnn.model.matching.ignore_inside).
IGNORE_LABEL = -1


@dataclass
class ImageList:
    """A batch of images padded to a common size.

    Attributes:
        tensor (Tensor[B, C, Hp, Wp]): the padded batch.
        image_sizes (list[tuple[int, int]]): ``(height, width)`` of each image before padding.
    """

    tensor: Tensor
    image_sizes: list

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device) -> "ImageList":
        return ImageList(self.tensor.to(device), list(self.image_sizes))

    @staticmethod
    def from_tensors(images: Sequence[Tensor], size_divisibility: int = 32, pad_value: float = 0.0) -> "ImageList":
        """Pad ``images`` (each Tensor[C, H, W]) to one size, a multiple of ``size_divisibility``."""
        if len(images) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        channels = {int(im.shape[0]) for im in images}
        if len(channels) != 1:
            raise ValueError(f"images in one batch must have the same number of channels, got {sorted(channels)}")
        max_h = max(int(im.shape[-2]) for im in images)
        max_w = max(int(im.shape[-1]) for im in images)
        if size_divisibility > 1:
            d = size_divisibility
            max_h = (max_h + d - 1) // d * d
            max_w = (max_w + d - 1) // d * d
        first = images[0]
        batch = first.new_full((len(images), first.shape[0], max_h, max_w), pad_value)
        for b, im in enumerate(images):  # one copy per image, not per pixel
            batch[b, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        return ImageList(batch, [(int(im.shape[-2]), int(im.shape[-1])) for im in images])


@dataclass
class MaskList:
    """N masks of one image of size ``image_size = (H, W)``, stored as crops.

    Crop ``i`` covers image pixels ``x in [x0_i, x0_i + w)``, ``y in [y0_i, y0_i + h)`` where
    ``(x0_i, y0_i) = origins[i]`` and ``(h, w)`` is the padded crop size shared by all masks.
    Invariant: crop pixels outside the object, and outside the image, are zero. Origins may be
    negative or run past the image edge only where the crop holds zeros there.

    Attributes:
        crops (Tensor[N, h, w]): bool (binary masks) or float in [0, 1] (soft masks).
        origins (Tensor[N, 2]): int64 ``(x0, y0)`` of each crop's top-left pixel in the image.
        image_size (tuple[int, int]): ``(H, W)`` of the image the masks belong to.
    """

    crops: Tensor
    origins: Tensor
    image_size: tuple

    def __post_init__(self):
        if self.crops.dim() != 3:
            raise ValueError(f"MaskList.crops must be [N, h, w], got shape {tuple(self.crops.shape)}")
        if self.origins.shape != (self.crops.shape[0], 2):
            raise ValueError(
                f"MaskList.origins must be [N, 2] with N={self.crops.shape[0]}, got {tuple(self.origins.shape)}"
            )
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @property
    def device(self) -> torch.device:
        return self.crops.device

    @property
    def is_soft(self) -> bool:
        return self.crops.dtype != torch.bool

    def to(self, device) -> "MaskList":
        return MaskList(self.crops.to(device), self.origins.to(device), self.image_size)

    def __getitem__(self, idx: Index) -> "MaskList":
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, (list, tuple)):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.crops.device)
        return MaskList(self.crops[idx], self.origins[idx], self.image_size)

    @staticmethod
    def empty(image_size, device=None, dtype=torch.bool) -> "MaskList":
        return MaskList(
            torch.zeros((0, 1, 1), dtype=dtype, device=device),
            torch.zeros((0, 2), dtype=torch.long, device=device),
            image_size,
        )

    def foreground_pixels(self):
        """The binary masks' pixels inside the image: ``(mask index, position in crops.flatten(), flat image index)``.

        Positions are decoded arithmetically from one ``nonzero`` over the flattened crops, and lookups
        use ``index_select``: both far cheaper on CPU than multi-dimensional advanced indexing.
        """
        H, W = self.image_size
        n, h, w = self.crops.shape
        pos = torch.nonzero(self.crops.flatten(), as_tuple=True)[0]
        n_idx = torch.div(pos, h * w, rounding_mode="floor")
        rem = pos - n_idx * (h * w)
        iy = torch.div(rem, w, rounding_mode="floor")
        y = self.origins[:, 1].index_select(0, n_idx) + iy
        x = self.origins[:, 0].index_select(0, n_idx) + (rem - iy * w)
        inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        if not bool(inside.all()):
            n_idx, pos, y, x = n_idx[inside], pos[inside], y[inside], x[inside]
        return n_idx, pos, y * W + x

    @staticmethod
    def cat(masks: Sequence["MaskList"]) -> "MaskList":
        """Concatenate mask lists of the same image, padding crops to a common size."""
        if len(masks) == 0:
            raise ValueError("MaskList.cat needs at least one MaskList")
        size = masks[0].image_size
        for m in masks:
            if m.image_size != size:
                raise ValueError(f"MaskList.cat: image sizes differ ({m.image_size} vs {size})")
        h = max(int(m.crops.shape[1]) for m in masks)
        w = max(int(m.crops.shape[2]) for m in masks)
        crops = [torch.nn.functional.pad(m.crops, (0, w - m.crops.shape[2], 0, h - m.crops.shape[1])) for m in masks]
        return MaskList(torch.cat(crops), torch.cat([m.origins for m in masks]), size)

    # ------------------------------------------------------------ conversions
    @staticmethod
    def from_dense(masks: Tensor, pad: int = 1) -> "MaskList":
        """Crop dense masks ``Tensor[N, H, W]`` (bool or float) to their tight boxes plus ``pad`` pixels:
        the one dense-to-crops conversion (``ops.mask_iou`` / ``mask_nms`` use it with ``pad=0``).

        The padding keeps a border of zeros around each object, so that bilinear sampling at
        the crop's edge (RoIAlign of mask targets) sees background, not a replicated edge. An empty
        mask gets a box of size 0 (plus the padding) at (0, 0); all crops share the largest box's
        size (at least 1 x 1).
        """
        if masks.dim() != 3:
            raise ValueError(f"from_dense expects [N, H, W], got {tuple(masks.shape)}")
        n, H, W = masks.shape
        if n == 0:
            return MaskList.empty((H, W), device=masks.device, dtype=masks.dtype)
        x0, y0, x1, y1, empty = _extents(masks)
        y0, x0 = y0.masked_fill(empty, 0) - pad, x0.masked_fill(empty, 0) - pad
        y1, x1 = y1.masked_fill(empty, 0) + pad, x1.masked_fill(empty, 0) + pad
        h = max(int((y1 - y0).max()), 1)
        w = max(int((x1 - x0).max()), 1)
        origins = torch.stack([x0, y0], dim=1).long()
        crops = _gather_windows(masks, origins, h, w)
        return MaskList(crops, origins, (H, W))

    def to_dense(self, indices: Optional[Tensor] = None) -> Tensor:
        """Dense masks ``Tensor[N, H, W]`` of the same dtype. Costs N*H*W: for small N or tests."""
        ml = self if indices is None else self[indices]
        H, W = self.image_size
        n, h, w = ml.crops.shape
        out = torch.zeros((n, H, W), dtype=ml.crops.dtype, device=ml.crops.device)
        if n == 0:
            return out
        ys = ml.origins[:, 1, None] + torch.arange(h, device=ml.device)  # [N, h]
        xs = ml.origins[:, 0, None] + torch.arange(w, device=ml.device)  # [N, w]
        valid = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
        nidx = torch.arange(n, device=ml.device)[:, None, None].expand(n, h, w)
        yy = ys[:, :, None].expand(n, h, w)
        xx = xs[:, None, :].expand(n, h, w)
        out[nidx[valid], yy[valid], xx[valid]] = ml.crops[valid]
        return out

    def threshold(self, threshold: float = 0.5) -> "MaskList":
        """Binary masks from soft ones: ``crop >= threshold`` (bool crops are returned as they are)."""
        if not self.is_soft:
            return self
        return MaskList(self.crops >= threshold, self.origins, self.image_size)

    # ---------------------------------------------------------------- geometry
    def areas(self) -> Tensor:
        """Tensor[N] of pixel counts (sum of the soft values for soft masks)."""
        if len(self) == 0:
            return torch.zeros(0, device=self.device)
        return self.crops.flatten(1).float().sum(dim=1)

    def tight_boxes(self) -> Tensor:
        """Tensor[N, 4] float xyxy: the tight box of each mask's nonzero pixels (zeros for empty masks)."""
        if len(self) == 0:
            return torch.zeros((0, 4), dtype=torch.float32, device=self.device)
        x0, y0, x1, y1, empty = _extents(self.crops)
        boxes = torch.stack([x0, y0, x1, y1], dim=1) + self.origins.repeat(1, 2)
        boxes = torch.where(empty[:, None], torch.zeros_like(boxes), boxes)
        return boxes.float()

    def compact(self, pad: int = 1) -> "MaskList":
        """Re-crop to the tight boxes plus ``pad`` (after transforms that shrink objects)."""
        if len(self) == 0:
            return self
        boxes = self.tight_boxes().long()
        x0 = boxes[:, 0] - pad
        y0 = boxes[:, 1] - pad
        h = int((boxes[:, 3] - boxes[:, 1]).max()) + 2 * pad
        w = int((boxes[:, 2] - boxes[:, 0]).max()) + 2 * pad
        new_origins = torch.stack([x0, y0], dim=1)
        crops = _gather_windows(self.crops, new_origins - self.origins, h, w)
        return MaskList(crops, new_origins, self.image_size)


def _extents(masks: Tensor):
    """``x0, y0, x1, y1, empty`` (each ``Tensor[N]``) of the nonzero pixels of ``masks[N, A, B]`` (bool
    or numeric; ends exclusive; an empty mask has ``x1 = y1 = 0``). Two passes over the masks as
    bytes: a bool ``!= 0`` or ``any`` would be several times slower at 800 x 520 x 704."""
    if masks.numel() == 0:  # 0-size masks: all empty (and a byte max over nothing is an error)
        z = torch.zeros(masks.shape[0], dtype=torch.long, device=masks.device)
        return z, z, z, z, torch.ones_like(z, dtype=torch.bool)
    nz = masks if masks.dtype == torch.bool else masks != 0  # `bool != 0` would widen to int64
    u8 = nz.view(torch.uint8)
    rows = u8.amax(dim=2) > 0  # [N, A]
    cols = u8.amax(dim=1) > 0  # [N, B]
    A, B = masks.shape[1], masks.shape[2]
    ar_h = torch.arange(A, device=masks.device)
    ar_w = torch.arange(B, device=masks.device)
    y0 = torch.where(rows, ar_h, A).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x0 = torch.where(cols, ar_w, B).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    return x0, y0, x1, y1, y1 <= 0


def _gather_windows(src: Tensor, origins: Tensor, h: int, w: int) -> Tensor:
    """Windows ``[N, h, w]`` of ``src[N, S1, S2]`` starting at ``origins[:, (x, y)]``; zeros outside ``src``."""
    n, S1, S2 = src.shape
    ys = origins[:, 1, None] + torch.arange(h, device=src.device)  # [N, h]
    xs = origins[:, 0, None] + torch.arange(w, device=src.device)  # [N, w]
    valid = ((ys >= 0) & (ys < S1))[:, :, None] & ((xs >= 0) & (xs < S2))[:, None, :]
    yc = ys.clamp(0, S1 - 1)[:, :, None].expand(n, h, w)
    xc = xs.clamp(0, S2 - 1)[:, None, :].expand(n, h, w)
    nidx = torch.arange(n, device=src.device)[:, None, None].expand(n, h, w)
    out = src[nidx, yc, xc]
    return out * valid if out.dtype != torch.bool else out & valid


@dataclass
class Instances:
    """Objects of one image: ground truth or predictions.

    Attributes:
        image_size (tuple[int, int]): ``(H, W)`` of the image the boxes refer to.
        boxes (Tensor[N, 4]): float xyxy in pixels.
        labels (Tensor[N]): int64 class index in ``[0, num_classes)`` (no background class); in
            training ground truth, ``IGNORE_LABEL`` (-1) marks an ignore region (an uncertain
            pseudo-label): anchors and proposals inside it are neither positive nor negative.
        scores (Tensor[N] | None): confidence, for predictions.
        masks (MaskList | None): instance masks (bool, or soft float for raw predictions).
    """

    image_size: tuple
    boxes: Tensor
    labels: Tensor
    scores: Optional[Tensor] = None
    masks: Optional[MaskList] = None

    def __post_init__(self):
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        n = int(self.boxes.shape[0])
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"Instances.boxes must be [N, 4], got {tuple(self.boxes.shape)}")
        if self.labels.shape != (n,):
            raise ValueError(f"Instances.labels must be [{n}], got {tuple(self.labels.shape)}")
        if self.scores is not None and self.scores.shape != (n,):
            raise ValueError(f"Instances.scores must be [{n}], got {tuple(self.scores.shape)}")
        if self.masks is not None and len(self.masks) != n:
            raise ValueError(f"Instances.masks holds {len(self.masks)} masks for {n} boxes")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty(image_size, device=None, with_scores: bool = False, with_masks: bool = False) -> "Instances":
        return Instances(
            image_size,
            torch.zeros((0, 4), dtype=torch.float32, device=device),
            torch.zeros((0,), dtype=torch.long, device=device),
            torch.zeros((0,), dtype=torch.float32, device=device) if with_scores else None,
            MaskList.empty(image_size, device=device) if with_masks else None,
        )

    def __getitem__(self, idx: Index) -> "Instances":
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, (list, tuple)):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.boxes.device)
        return Instances(
            self.image_size,
            self.boxes[idx],
            self.labels[idx],
            None if self.scores is None else self.scores[idx],
            None if self.masks is None else self.masks[idx],
        )

    def to(self, device) -> "Instances":
        return Instances(
            self.image_size,
            self.boxes.to(device),
            self.labels.to(device),
            None if self.scores is None else self.scores.to(device),
            None if self.masks is None else self.masks.to(device),
        )

    def replace(self, **changes) -> "Instances":
        return replace(self, **changes)

    @staticmethod
    def cat(items: Sequence["Instances"]) -> "Instances":
        if len(items) == 0:
            raise ValueError("Instances.cat needs at least one Instances")
        size = items[0].image_size
        has_scores = all(i.scores is not None for i in items)
        has_masks = all(i.masks is not None for i in items)
        return Instances(
            size,
            torch.cat([i.boxes for i in items]),
            torch.cat([i.labels for i in items]),
            torch.cat([i.scores for i in items]) if has_scores else None,
            MaskList.cat([i.masks for i in items]) if has_masks else None,
        )


# ---------------------------------------------------------------------- boxes
def box_area(boxes: Tensor) -> Tensor:
    """Areas ``Tensor[N]`` of xyxy ``boxes (Tensor[N, 4])``; degenerate boxes have area 0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix ``Tensor[N, M]`` of xyxy boxes ``a (Tensor[N, 4])`` and ``b (Tensor[M, 4])``."""
    area_a = box_area(a)
    area_b = box_area(b)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def clip_boxes(boxes: Tensor, image_size) -> Tensor:
    """Clip xyxy boxes to ``[0, W] x [0, H]``."""
    h, w = image_size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


@dataclass
class Sample:
    """One image and its ground truth, as every reader yields it and the loader batches it.

    Attributes:
        image (Tensor[C, H, W]): float32 in [0, 1]; C = 1 (grayscale) or 3 (RGB).
        instances (Instances): ground truth: boxes (tight boxes of the masks), labels, and
            ``masks`` as a bool ``MaskList``; empty for unlabeled images.
        image_id (str): the dataset's id (file stem for Sartorius and DSB2018).
        meta (dict): reader-specific extras (cell type name, source path, original size...).
    """

    image: Tensor
    instances: Instances
    image_id: str
    meta: dict = None

    def __post_init__(self):
        if self.meta is None:
            self.meta = {}
        if self.image.dim() != 3:
            raise ValueError(f"{self.image_id}: image must be [C, H, W], got {tuple(self.image.shape)}")
        if tuple(self.image.shape[-2:]) != tuple(self.instances.image_size):
            raise ValueError(
                f"{self.image_id}: image is {tuple(self.image.shape[-2:])} but its instances say {self.instances.image_size}"
            )
