"""Test-time augmentation views and their exact inverse maps.

A ``View`` is a sequence of dihedral steps (``hflip``, ``vflip``, ``transpose``; each is its own
inverse) followed by an optional rescale. Forward, the view transforms the image; the model then
predicts in the view's pixel grid; ``View.invert`` maps the predictions (boxes and soft crop masks)
back to the original image.

- Dihedral steps are index permutations of the pixel grid, applied to crops and their origins:
  ``hflip`` maps column ``x`` of an image ``W`` wide to ``W - 1 - x``, so a crop of width ``w`` at
  ``x0`` flips in place and moves to ``W - x0 - w``; ``transpose`` swaps axes and origins. No
  resampling, so the round trip is bit-exact.
- A rescale maps through resampling: each target pixel's centre is located in the source crop
  (half-pixel model: pixel ``i`` covers ``[i, i + 1)``) and read by bilinear interpolation, zero
  outside the crop (``MaskList``'s invariant). Upscaling by 2 and back is exact for binary masks.

View specs (``--tta``, ``TestConfig.tta``): comma-separated items, each one view besides the identity
(always view 0); an item composes steps with ``+``:
``hflip``, ``vflip``, ``transpose``, ``rot90`` (= ``torch.rot90(x, 1, (-2, -1))``, counter-clockwise),
``rot180``, ``rot270``, ``scale=S``, e.g. ``hflip,vflip,rot90,scale=1.25,scale=1.25+hflip``.
``d4`` expands to the 7 non-identity dihedral views (8 views with the identity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn.config import ConfigError
from maskrcnn.structures import Instances, MaskList

STEPS = ("hflip", "vflip", "transpose")
# Named dihedral elements as step sequences. torch.rot90(x, 1, (-2, -1)) == x.flip(-1).transpose(-2, -1).
_NAMED = {
    "hflip": ("hflip",),
    "vflip": ("vflip",),
    "transpose": ("transpose",),
    "rot90": ("hflip", "transpose"),
    "rot180": ("hflip", "vflip"),
    "rot270": ("transpose", "hflip"),
}
_D4 = ("hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "rot90+hflip")


# ------------------------------------------------------------------ elementary steps
def _step_image(step: str, image: Tensor) -> Tensor:
    if step == "hflip":
        return image.flip(-1)
    if step == "vflip":
        return image.flip(-2)
    return image.transpose(-2, -1).contiguous()


def _step_size(step: str, size: Tuple[int, int]) -> Tuple[int, int]:
    return (size[1], size[0]) if step == "transpose" else size


def _step_boxes(step: str, boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """Boxes ``Tensor[N, 4]`` xyxy of an image of ``size`` (H, W) through one step."""
    H, W = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    if step == "hflip":
        return torch.stack([W - x2, y1, W - x1, y2], dim=-1)
    if step == "vflip":
        return torch.stack([x1, H - y2, x2, H - y1], dim=-1)
    return torch.stack([y1, x1, y2, x2], dim=-1)


def _step_masks(step: str, masks: MaskList) -> MaskList:
    """Exact index map of crop masks through one step (crops flipped/transposed, origins moved)."""
    H, W = masks.image_size
    _, h, w = masks.crops.shape
    x0, y0 = masks.origins[:, 0], masks.origins[:, 1]
    if step == "hflip":
        return MaskList(masks.crops.flip(-1), torch.stack([W - x0 - w, y0], dim=1), (H, W))
    if step == "vflip":
        return MaskList(masks.crops.flip(-2), torch.stack([x0, H - y0 - h], dim=1), (H, W))
    return MaskList(masks.crops.transpose(-2, -1).contiguous(), torch.stack([y0, x0], dim=1), (W, H))


# ------------------------------------------------------------------------ rescaling
def scaled_size(size: Tuple[int, int], scale: float) -> Tuple[int, int]:
    """``(H, W)`` of an image of ``size`` rescaled by ``scale`` (rounded, at least 1)."""
    return (max(1, int(round(size[0] * scale))), max(1, int(round(size[1] * scale))))


def resize_image(image: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear resize of ``image (Tensor[C, H, W])`` to ``size``; antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    out = F.interpolate(image[None].float(), size=tuple(size), mode="bilinear", align_corners=False,
                        antialias=shrink)
    return out[0].to(image.dtype)


def resize_boxes(boxes: Tensor, src_size: Tuple[int, int], dst_size: Tuple[int, int]) -> Tensor:
    """Boxes ``Tensor[N, 4]`` of an image of ``src_size`` mapped to the same image resized to ``dst_size``."""
    sy = dst_size[0] / src_size[0]
    sx = dst_size[1] / src_size[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def resize_masks(masks: MaskList, size: Tuple[int, int], max_elements: int = 1 << 22) -> MaskList:
    """Crop masks of an image of ``masks.image_size`` mapped onto the same image resized to ``size``.

    Each target crop spans the source crop's extent in target pixels (floor/ceil), one common size
    for all; each target pixel centre is located in the source crop and read bilinearly, zero
    outside it. Soft crops stay float; bool crops are resampled as 0/1 and cut at 0.5.
    Chunked over masks so that the sampling grid stays under ``max_elements`` pixels.
    """
    H0, W0 = masks.image_size
    H1, W1 = int(size[0]), int(size[1])
    if (H0, W0) == (H1, W1):
        return masks
    n, h, w = masks.crops.shape
    sy, sx = H1 / H0, W1 / W0
    dev = masks.device
    h1 = int(math.ceil(h * sy)) + 1  # any placement of h source pixels spans at most this many
    w1 = int(math.ceil(w * sx)) + 1
    ox = torch.floor(masks.origins[:, 0].double() * sx).long()
    oy = torch.floor(masks.origins[:, 1].double() * sy).long()
    src = masks.crops.float() if masks.is_soft else masks.crops.to(torch.float32)
    out = torch.zeros((n, h1, w1), dtype=torch.float32, device=dev)
    ar_y = torch.arange(h1, device=dev, dtype=torch.float64)
    ar_x = torch.arange(w1, device=dev, dtype=torch.float64)
    chunk = max(1, max_elements // max(1, h1 * w1))
    for s in range(0, n, chunk):  # chunks bound the grid's memory
        e = min(n, s + chunk)
        # Source-crop edge coordinate of each target pixel centre; grid_sample (align_corners=False)
        # maps edge coordinate u of a crop w wide to 2u/w - 1.
        u = ((ox[s:e, None] + ar_x + 0.5) / sx - masks.origins[s:e, 0, None].double()) * (2.0 / w) - 1.0
        v = ((oy[s:e, None] + ar_y + 0.5) / sy - masks.origins[s:e, 1, None].double()) * (2.0 / h) - 1.0
        grid = torch.stack(
            [u[:, None, :].expand(e - s, h1, w1), v[:, :, None].expand(e - s, h1, w1)], dim=-1
        ).float()
        out[s:e] = F.grid_sample(src[s:e, None], grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)[:, 0]
    if masks.is_soft:
        crops = out.to(masks.crops.dtype)
    else:
        crops = out >= 0.5
    # Keep the invariant "zero outside the image" of the new grid.
    ys = oy[:, None] + torch.arange(h1, device=dev)
    xs = ox[:, None] + torch.arange(w1, device=dev)
    inside = ((ys >= 0) & (ys < H1))[:, :, None] & ((xs >= 0) & (xs < W1))[:, None, :]
    crops = crops & inside if crops.dtype == torch.bool else crops * inside
    return MaskList(crops, torch.stack([ox, oy], dim=1), (H1, W1))


# ----------------------------------------------------------------------------- views
@dataclass(frozen=True)
class View:
    """A test-time view: dihedral ``steps`` applied in order, then a rescale by ``scale``.

    Attributes:
        name (str): the spec it was parsed from ("identity" for view 0).
        steps (tuple[str, ...]): each of ``hflip | vflip | transpose``.
        scale (float): image rescale factor applied after the steps.
    """

    name: str = "identity"
    steps: Tuple[str, ...] = ()
    scale: float = 1.0

    def view_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """``(H, W)`` of the view of an image of ``size``."""
        for step in self.steps:
            size = _step_size(step, size)
        return scaled_size(size, self.scale) if self.scale != 1.0 else (int(size[0]), int(size[1]))

    def _dihedral_sizes(self, size) -> List[Tuple[int, int]]:
        sizes = [(int(size[0]), int(size[1]))]
        for step in self.steps:
            sizes.append(_step_size(step, sizes[-1]))
        return sizes

    # forward -------------------------------------------------------------------
    def apply_image(self, image: Tensor) -> Tensor:
        """The view of ``image (Tensor[C, H, W])``: ``Tensor[C, H', W']``."""
        for step in self.steps:
            image = _step_image(step, image)
        if self.scale != 1.0:
            image = resize_image(image, scaled_size(tuple(image.shape[-2:]), self.scale))
        return image

    def apply_boxes(self, boxes: Tensor, size: Tuple[int, int]) -> Tensor:
        """Boxes ``Tensor[N, 4]`` of an image of ``size`` moved into the view."""
        sizes = self._dihedral_sizes(size)
        for step, s in zip(self.steps, sizes):
            boxes = _step_boxes(step, boxes, s)
        if self.scale != 1.0:
            boxes = resize_boxes(boxes, sizes[-1], self.view_size(size))
        return boxes

    def apply_masks(self, masks: MaskList) -> MaskList:
        """Crop masks of the original image moved into the view (tests, and training-time reuse)."""
        for step in self.steps:
            masks = _step_masks(step, masks)
        if self.scale != 1.0:
            masks = resize_masks(masks, scaled_size(masks.image_size, self.scale))
        return masks

    # inverse -------------------------------------------------------------------
    def invert_boxes(self, boxes: Tensor, size: Tuple[int, int]) -> Tensor:
        """Boxes predicted in the view of an image of ``size`` mapped back to that image."""
        sizes = self._dihedral_sizes(size)
        if self.scale != 1.0:
            boxes = resize_boxes(boxes, self.view_size(size), sizes[-1])
        for step, s in zip(reversed(self.steps), reversed(sizes[1:])):
            boxes = _step_boxes(step, boxes, s)  # each step is its own inverse, taken at the view's size
        return boxes

    def invert_masks(self, masks: MaskList, size: Tuple[int, int]) -> MaskList:
        """Crop masks predicted in the view (``masks.image_size`` = view size) mapped back to ``size``."""
        sizes = self._dihedral_sizes(size)
        if tuple(masks.image_size) != self.view_size(size):
            raise ValueError(
                f"view {self.name!r}: masks are for an image of {masks.image_size}, expected the view size "
                f"{self.view_size(size)} of an image of {tuple(size)}"
            )
        if self.scale != 1.0:
            masks = resize_masks(masks, sizes[-1])
        for step in reversed(self.steps):
            masks = _step_masks(step, masks)
        return masks

    def invert(self, instances: Instances, size: Tuple[int, int]) -> Instances:
        """Predictions made on the view of an image of ``size`` (H, W), mapped back to that image."""
        size = (int(size[0]), int(size[1]))
        if tuple(instances.image_size) != self.view_size(size):
            raise ValueError(
                f"view {self.name!r}: predictions are for an image of {instances.image_size}, expected "
                f"{self.view_size(size)}"
            )
        masks = None if instances.masks is None else self.invert_masks(instances.masks, size)
        return Instances(size, self.invert_boxes(instances.boxes, size), instances.labels, instances.scores, masks)

    def key(self) -> tuple:
        """What the view does (not how it is spelled): two views with one key are duplicates."""
        grid = torch.arange(6).reshape(1, 2, 3)
        for step in self.steps:
            grid = _step_image(step, grid)
        return (tuple(grid.shape), tuple(grid.flatten().tolist()), float(self.scale))


IDENTITY = View()
SCALE_RANGE = (0.125, 8.0)  # a view's total rescale factor: beyond, memory grows with its square for no gain


def parse_view(spec: str) -> View:
    """One view from a spec such as ``"rot90+hflip"`` or ``"scale=1.25+vflip"``."""
    steps: List[str] = []
    scale = 1.0
    text = spec.strip()
    if not text:
        raise ConfigError("empty TTA view spec (test.tta, --tta)")
    for part in text.split("+"):
        part = part.strip().lower()
        if part in _NAMED:
            steps.extend(_NAMED[part])
        elif part.startswith("scale="):
            try:
                s = float(part.split("=", 1)[1])
            except ValueError:
                raise ConfigError(f"TTA view {spec!r}: scale must be a number, got {part!r} (test.tta, --tta)") from None
            if not (s > 0 and math.isfinite(s)):
                raise ConfigError(f"TTA view {spec!r}: scale must be a positive number, got {s} (test.tta, --tta)")
            scale *= s
        elif part in ("identity", "none", ""):
            continue
        else:
            raise ConfigError(
                f"unknown TTA transform {part!r} in {spec!r}; use {', '.join(_NAMED)}, scale=S, "
                "compositions with '+', or d4 (test.tta, --tta)"
            )
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:  # 1000 would ask for a million times the pixels
        raise ConfigError(f"TTA view {spec!r}: scale must be in [{SCALE_RANGE[0]}, {SCALE_RANGE[1]}], got {scale:g} "
                          "(test.tta, --tta)")
    return View(text, tuple(steps), scale)


def parse_tta(spec: Union[str, Iterable[str], None]) -> List[View]:
    """Views for a TTA spec (comma-separated string or a sequence of items); view 0 is the identity.
    ``none`` (alone) is the identity only, as an empty spec.

    Raises ConfigError (a ValueError) for an unknown transform, or for two items that are the same transform
    (e.g. ``rot180`` and ``hflip+vflip``): a duplicate would count one view twice in the merge.
    """
    if spec is None:
        items: Sequence[str] = ()
    elif isinstance(spec, str):
        items = [s for s in spec.split(",") if s.strip()]
    else:
        items = [s for s in spec if str(s).strip()]
    if any(str(s).strip().lower() == "none" for s in items):
        if len(items) > 1:
            raise ConfigError(f"TTA 'none' means no views besides the image itself; it cannot be combined "
                              f"with others ({', '.join(map(str, items))}; test.tta, --tta)")
        items = []
    expanded: List[str] = []
    for item in items:
        expanded.extend(_D4 if item.strip().lower() == "d4" else [item])
    views = [IDENTITY]
    seen = {IDENTITY.key(): IDENTITY.name}
    for item in expanded:
        v = parse_view(item)
        k = v.key()
        if k in seen:
            raise ConfigError(f"TTA view {item!r} is the same transform as {seen[k]!r}; list each view once (test.tta, --tta)")
        seen[k] = v.name
        views.append(v)
    return views
