"""RoIAlign (He et al. 2017), with the semantics of torchvision.ops.roi_align.

For RoI ``k`` with batch index ``b`` and box ``(x1, y1, x2, y2)`` in input-image pixels:

- The box is scaled by ``spatial_scale``; with ``aligned=True`` it is then shifted by -0.5 so
  that pixel ``i`` of the feature map is sampled at its centre (half-pixel model). With
  ``aligned=False`` (the original Detectron behaviour) there is no shift and the box's width and
  height are clamped to at least 1.
- The box is split into ``output_size`` bins; each bin averages ``gh x gw`` bilinear samples at
  regular positions inside it, where ``gh = sampling_ratio`` (or ``ceil(roi_h / pooled_h)`` when
  ``sampling_ratio <= 0``, adaptive per RoI), likewise ``gw``.
- A sample with ``y < -1`` or ``y > H`` (or ``x``) is 0; otherwise its coordinates are clamped to
  ``[0, H - 1]`` before interpolation, so samples within one pixel of the edge repeat the border.
- A box of zero or negative size with ``aligned=True`` and ``sampling_ratio <= 0`` has an empty
  grid and gives 0 (torchvision divides by ``max(gh * gw, 1)``).

Precision: float64 inputs are computed in float64; float32, float16 and bfloat16 in float32
(coordinates and accumulation), with the output cast back. ``rois`` are converted to float32
for half types (a 800-pixel coordinate has a resolution of 0.5 px in float16) and to the input's
dtype otherwise.

Memory format: the compiled kernels read NCHW and channels_last inputs natively (channels_last is
the faster layout: a sample reads C contiguous values); a channels_last input gives a
channels_last output and gradient. Other strides are made contiguous first. On the CPU, an NCHW
input with many RoIs for its size is run through the NHWC kernel (converted there and back, see
``CPU_NHWC_MIN_SAMPLES_PER_PIXEL``): same numbers, NCHW output and gradient. The twin accepts any
layout and returns a contiguous output. On CUDA, a batch index outside ``[0, N)`` gives zeros
(checking would cost a device sync); on the CPU it is an error.

Verified against torchvision.ops.roi_align (forward and backward, float64 to 1e-14, aligned
True/False, sampling_ratio 0/1/2, scales 1 to 1/8, boxes outside the image, empty and inverted)
by ``tools/compare_twins_torchvision.py``.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import guard_or_false

from maskrcnn.ops._ext import get_ext, has_cuda_ops


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def roi_align_reference(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    max_elements: int = 1 << 25,
) -> Tensor:
    """Pure-PyTorch RoIAlign: the fallback and test oracle. Differentiable through autograd.

    Args:
        input (Tensor[N, C, H, W]): feature map (any memory format).
        rois (Tensor[K, 5]): ``(batch_index, x1, y1, x2, y2)`` in input-image pixels.
        output_size: ``(pooled_h, pooled_w)`` or an int.
    Returns:
        Tensor[K, C, pooled_h, pooled_w]
    """
    ph, pw = _pair(output_size)
    _check_inputs(input, rois)
    K = rois.shape[0]
    N, C, H, W = input.shape
    if K == 0:
        return input.new_zeros((0, C, ph, pw))
    dtype = input.dtype
    # Compute coordinates in float32 at least (float64 stays float64) for reduced-precision inputs.
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    r = rois.to(cdt)
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    x2 = r[:, 3] * spatial_scale - offset
    y2 = r[:, 4] * spatial_scale - offset
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / ph
    bin_w = roi_w / pw
    if sampling_ratio > 0:
        gh = torch.full((K,), sampling_ratio, dtype=torch.long, device=rois.device)
        gw = gh
    else:
        gh = torch.ceil(roi_h / ph).long().clamp(min=0)
        gw = torch.ceil(roi_w / pw).long().clamp(min=0)
    out = []
    gh_all = int(gh.max()) if K else 0
    gw_all = int(gw.max()) if K else 0
    per_roi = max(1, 4 * C * ph * pw * max(gh_all, 1) * max(gw_all, 1))
    chunk = max(1, max_elements // per_roi)
    for s in range(0, K, chunk):  # chunks bound memory, not a per-RoI loop
        sl = slice(s, min(K, s + chunk))
        out.append(
            _roi_align_chunk(input, r[sl, 0].long(), y1[sl], x1[sl], bin_h[sl], bin_w[sl], gh[sl], gw[sl], ph, pw)
        )
    return torch.cat(out).to(dtype)


def _roi_align_chunk(input, bidx, y1, x1, bin_h, bin_w, gh, gw, ph, pw):
    N, C, H, W = input.shape
    dev = input.device
    cdt = y1.dtype
    GH = max(int(gh.max()), 1)
    GW = max(int(gw.max()), 1)
    iy = torch.arange(GH, device=dev, dtype=cdt)
    ix = torch.arange(GW, device=dev, dtype=cdt)
    py = torch.arange(ph, device=dev, dtype=cdt)
    px = torch.arange(pw, device=dev, dtype=cdt)
    ghf = gh.to(cdt).clamp(min=1)[:, None, None]
    gwf = gw.to(cdt).clamp(min=1)[:, None, None]
    # y[k, py, iy], x[k, px, ix]
    y = y1[:, None, None] + py[None, :, None] * bin_h[:, None, None] + (iy[None, None, :] + 0.5) * bin_h[:, None, None] / ghf
    x = x1[:, None, None] + px[None, :, None] * bin_w[:, None, None] + (ix[None, None, :] + 0.5) * bin_w[:, None, None] / gwf
    valid_y = (iy[None, None, :] < gh[:, None, None]) & (y >= -1.0) & (y <= H)
    valid_x = (ix[None, None, :] < gw[:, None, None]) & (x >= -1.0) & (x <= W)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y_low = y.floor().long()
    x_low = x.floor().long()
    top_y = y_low >= H - 1
    top_x = x_low >= W - 1
    y_low = torch.where(top_y, torch.full_like(y_low, H - 1), y_low)
    x_low = torch.where(top_x, torch.full_like(x_low, W - 1), x_low)
    y = torch.where(top_y, y_low.to(cdt), y)
    x = torch.where(top_x, x_low.to(cdt), x)
    y_high = torch.where(top_y, y_low, y_low + 1)
    x_high = torch.where(top_x, x_low, x_low + 1)
    ly = y - y_low.to(cdt)
    lx = x - x_low.to(cdt)
    hy = 1.0 - ly
    hx = 1.0 - lx
    # Zero the weights of invalid samples; they still index valid memory after clamping.
    wy = torch.stack([hy, ly], dim=-1) * valid_y[..., None]  # [k, ph, GH, 2]
    wx = torch.stack([hx, lx], dim=-1) * valid_x[..., None]  # [k, pw, GW, 2]
    yi = torch.stack([y_low, y_high], dim=-1)  # [k, ph, GH, 2]
    xi = torch.stack([x_low, x_high], dim=-1)  # [k, pw, GW, 2]
    # Gather values v[k, C, ph, GH, 2, pw, GW, 2]
    b = bidx[:, None, None, None, None, None, None]
    Y = yi[:, :, :, :, None, None, None]
    X = xi[:, None, None, None, :, :, :]
    vals = input.permute(0, 2, 3, 1)[b, Y, X]  # [k, ph, GH, 2, pw, GW, 2, C]
    weight = wy[:, :, :, :, None, None, None] * wx[:, None, None, None, :, :, :]
    vals = vals.to(cdt) * weight[..., None]
    summed = vals.sum(dim=(2, 3, 5, 6))  # [k, ph, pw, C]
    count = (gh.clamp(min=1) * gw.clamp(min=1)).to(cdt)
    if (gh == 0).any() or (gw == 0).any():  # an empty RoI: torchvision divides by max(count, 1)
        count = torch.where((gh * gw) > 0, count, torch.ones_like(count))
    return (summed / count[:, None, None, None]).permute(0, 3, 1, 2).contiguous()


def _check_inputs(input: Tensor, rois: Tensor) -> None:
    if input.dim() != 4:
        raise ValueError(f"roi_align: input must be [N, C, H, W], got shape {tuple(input.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align: rois must be [K, 5] (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    if rois.device != input.device:
        raise ValueError(f"roi_align: rois on {rois.device} but input on {input.device}")


# CPU, NCHW input: when the RoIs take at least this many bilinear samples per feature-map pixel,
# converting the map to channels_last, running the NHWC kernel and converting the result back is
# faster than the NCHW kernel (2 cores, 512 RoIs of 7x7, 2 x 256 channels: forward on 200x200
# 159 -> 90 ms, forward+backward on 100x100 329 -> 101 ms; `python bench/ops.py --ops roi_align`).
# With a gradient the map's gradient is converted back too, hence the higher bar (at 1.25 samples
# per pixel, 200x200, forward+backward went 343 -> 369 ms). Few RoIs on a large map stay NCHW.
CPU_NHWC_MIN_SAMPLES_PER_PIXEL = 0.5
CPU_NHWC_MIN_SAMPLES_PER_PIXEL_GRAD = 2.0


def _cpu_convert_to_nhwc(input: Tensor, rois: Tensor, output_size: Tuple[int, int], sampling_ratio: int,
                         needs_grad: bool = False) -> bool:
    if input.is_cuda or input.shape[1] <= 1 or not input.is_contiguous():
        return False
    n, _, h, w = input.shape
    per_bin = sampling_ratio * sampling_ratio if sampling_ratio > 0 else 4  # adaptive: ~2 x 2 typical
    samples = rois.shape[0] * output_size[0] * output_size[1] * per_bin
    bar = CPU_NHWC_MIN_SAMPLES_PER_PIXEL_GRAD if needs_grad else CPU_NHWC_MIN_SAMPLES_PER_PIXEL
    # A RoI count unknown while tracing (torch.export after NMS) stays NCHW: the same numbers.
    return guard_or_false(samples >= bar * n * h * w)


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """RoIAlign of ``rois (Tensor[K, 5])`` on ``input (Tensor[N, C, H, W])`` -> ``Tensor[K, C, ph, pw]``.

    Float32, float16, bfloat16 and float64. Uses the compiled kernel when built (CPU or CUDA),
    else :func:`roi_align_reference`. See the module docstring for the exact semantics, precision
    and memory formats (a channels_last input gives a channels_last output when compiled).
    """
    output_size = _pair(output_size)
    _check_inputs(input, rois)
    if input.dtype in (torch.float16, torch.bfloat16):
        rois = rois.float()
    elif rois.dtype != input.dtype:
        rois = rois.to(input.dtype)
    ext = get_ext()
    if ext is None or (input.is_cuda and not has_cuda_ops()):
        return roi_align_reference(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    convert = _cpu_convert_to_nhwc(input, rois, output_size, sampling_ratio, needs_grad)
    if convert:
        input = input.contiguous(memory_format=torch.channels_last)
    # torch.ops.maskrcnn.roi_align: autograd, autocast and fake kernels come with the op.
    out = torch.ops.maskrcnn.roi_align(input, rois, float(spatial_scale), output_size[0], output_size[1],
                                       int(sampling_ratio), bool(aligned))
    return out.contiguous() if convert else out


class RoIAlign(torch.nn.Module):
    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
