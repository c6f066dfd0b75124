"""Every public op runs its compiled kernel when ``maskrcnn._C`` is built.

The compiled-vs-twin tests compare two paths; if a dispatcher silently called the twin they would
compare the twin with itself and pass. Here every pure-PyTorch twin (``*_reference`` in the
``maskrcnn.ops`` modules) is made to raise, a dispatch mode counts kernel calls, and
each public op is called: it must work, give the hand-checked answer, and reach its kernel (the
calls of the ``torch.ops.maskrcnn`` dispatcher ops are counted).
"""
from collections import Counter
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import maskrcnn.ops as ops
from tests.ops.conftest import DEVICES

# The dispatcher ops (torch.ops.maskrcnn.*) whose kernels the public ops must reach.
KERNELS = {"roi_align", "roi_align_backward", "nms", "greedy_suppress", "crop_mask_intersection", "match_boxes"}


class _Counting(TorchDispatchMode):
    """Counts each call of a ``torch.ops.maskrcnn`` op that reaches the backend kernels.

    The mode sees an op after autograd and autocast, right before its CPU/CUDA kernel, which it
    then runs: a count is a kernel call (the backward op included, run by the autograd engine).
    """

    def __init__(self, calls: Counter):
        super().__init__()
        self._calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "maskrcnn":
            self._calls[func._opname] += 1
        return func(*args, **(kwargs or {}))


def _twin_names():
    out = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "maskrcnn.ops" or mod_name.startswith("maskrcnn.ops.")):
            continue
        for attr in dir(mod):
            if attr.endswith("_reference") and callable(getattr(mod, attr)):
                out.append((mod, attr))
    return out


@pytest.fixture
def kernel_calls(ext, monkeypatch):
    """Twins raise; yields the Counter of kernel calls of the ``torch.ops.maskrcnn`` ops."""

    def twin_called(*args, **kwargs):
        raise AssertionError("a pure-PyTorch twin ran although maskrcnn._C is built")

    patched = set()
    for mod, attr in _twin_names():
        monkeypatch.setattr(mod, attr, twin_called)
        patched.add(attr)
    assert {"nms_reference", "greedy_suppress_reference", "roi_align_reference",
            "crop_mask_intersection_reference", "best_matches_reference"} <= patched
    calls: Counter = Counter()
    with _Counting(calls):
        yield calls
    assert set(calls) <= KERNELS


def _ramp():
    # value(y, x) = 4 y + x + 1 on a 4 x 4 map (as tests/ops/test_roi_align.py)
    return (4 * torch.arange(4.0)[:, None] + torch.arange(4.0)[None, :] + 1)[None, None]


@pytest.mark.parametrize("device", DEVICES)
def test_roi_align_forward_and_backward_run_the_kernels(kernel_calls, device):
    x = _ramp().repeat(1, 2, 1, 1).to(device).requires_grad_(True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]], device=device)
    out = ops.roi_align(x, rois, 1, 1.0, 2, True)
    # Box [1, 3] aligned: samples at 1.0 and 2.0 per axis -> mean 4 * 1.5 + 1.5 + 1.
    torch.testing.assert_close(out.cpu(), torch.full((1, 2, 1, 1), 8.5))
    out.sum().backward()
    # Four samples at integer positions (1, 2) x (1, 2), each with weight 1/4.
    want = torch.zeros(1, 2, 4, 4)
    want[:, :, 1:3, 1:3] = 0.25
    torch.testing.assert_close(x.grad.cpu(), want)
    mod = ops.RoIAlign(1, 1.0, 2, True)
    torch.testing.assert_close(mod(x.detach(), rois), out.detach())
    assert kernel_calls["roi_align"] == 2 and kernel_calls["roi_align_backward"] == 1


@pytest.mark.parametrize("device", DEVICES)
def test_nms_and_batched_nms_run_the_kernel(kernel_calls, device):
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [1, 1, 10, 10.0]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.95, 0.7], device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [2, 0, 1]  # IoU(0, 1) = 0.5 is kept; IoU(0, 3) = 0.81
    assert kernel_calls["nms"] == 1
    groups = torch.tensor([0, 0, 0, 1], device=device)
    assert ops.batched_nms(boxes, scores, groups, 0.5).tolist() == [2, 0, 1, 3]
    assert kernel_calls["nms"] == 2


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_suppress_runs_the_kernel(kernel_calls, device):
    iou = torch.tensor([[1.0, 0.6, 0.1], [0.6, 1.0, 0.7], [0.1, 0.7, 1.0]], device=device)
    assert ops.greedy_suppress(iou, 0.5).tolist() == [0, 2]  # 1 goes with 0; 2 only overlaps the removed 1
    assert kernel_calls["greedy_suppress"] == 1


def _masks():
    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[0, 1:5, 1:5] = True  # 16 px
    m[1, 1:5, 3:7] = True  # 16 px, 8 shared with 0
    m[2, 6:8, 6:8] = True  # apart
    return m


@pytest.mark.parametrize("device", DEVICES)
def test_mask_iou_and_crop_mask_iou_run_the_kernel(kernel_calls, device):
    m = _masks().to(device)
    want = torch.tensor([[1.0, 8 / 24, 0.0], [8 / 24, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(ops.mask_iou(m, m).cpu(), want)
    assert kernel_calls["crop_mask_intersection"] == 1
    crops, origins = torch.ones(1, 4, 4, dtype=torch.bool, device=device), torch.tensor([[1, 1]], device=device)
    torch.testing.assert_close(ops.crop_mask_iou(crops, origins, crops, origins).cpu(), torch.ones(1, 1))
    assert kernel_calls["crop_mask_intersection"] == 2


@pytest.mark.parametrize("device", DEVICES)
def test_mask_nms_and_crop_mask_nms_run_the_kernels(kernel_calls, device):
    m = _masks().to(device)
    scores = torch.tensor([0.5, 0.9, 0.7], device=device)
    assert ops.mask_nms(m, scores, 0.3).tolist() == [1, 2]  # IoU(0, 1) = 1/3 > 0.3
    assert ops.mask_nms(m, scores, 0.4).tolist() == [1, 2, 0]
    from maskrcnn.structures import MaskList

    crops = MaskList.from_dense(m, pad=0)
    assert ops.crop_mask_nms(crops.crops, crops.origins, scores, 0.3).tolist() == [1, 2]
    assert kernel_calls["crop_mask_intersection"] == 3 and kernel_calls["greedy_suppress"] == 3


def test_best_matches_runs_the_kernel_on_the_cpu(kernel_calls):
    # (CPU only: other devices run the twin by design, there is no kernel there.)
    gt = torch.tensor([[[0, 0, 10, 10], [20, 0, 30, 10.0]]])
    boxes = torch.tensor([[0, 0, 10, 5], [20, 0, 25, 10], [22, 2, 28, 8.0]])
    best, matched, low = ops.best_matches(gt, torch.ones(1, 2, dtype=torch.bool), boxes)
    torch.testing.assert_close(best, torch.tensor([[0.5, 0.5, 0.36]]))
    assert matched.tolist() == [[0, 1, 1]] and low.tolist() == [[True, True, False]]
    assert kernel_calls["match_boxes"] == 1


def test_every_public_op_is_covered_here():
    # A new public op must get a dispatch test above (and a kernel, or be listed as pure PyTorch).
    pure_or_helpers = {"get_ext", "has_cuda_ops", "crop_pair_intersections"}  # the last: PyTorch only
    public = {n for n in ops.__all__ if not n.endswith("_reference") and n not in pure_or_helpers}
    covered = {"RoIAlign", "roi_align", "nms", "batched_nms", "greedy_suppress", "mask_iou", "crop_mask_iou",
               "mask_nms", "crop_mask_nms", "best_matches"}
    assert public == covered
