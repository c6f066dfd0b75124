"""The ops on PyTorch's dispatcher (``torch.ops.maskrcnn.*``): schemas, kernels per device, fake
kernels, autograd and autocast, checked with ``torch.library.opcheck`` (small inputs, empty ones too)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import maskrcnn.ops as ops
from maskrcnn.ops import _library
from tests.ops.conftest import DEVICES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = ("roi_align", "roi_align_backward", "nms", "greedy_suppress", "crop_mask_intersection", "match_boxes")


def _op(name):
    return getattr(torch.ops.maskrcnn, name).default


def test_every_op_is_on_the_dispatcher_with_the_python_schemas(ext):
    assert set(_library.SCHEMAS) == set(OPS)
    if _library.defined_in_python():
        pytest.skip("maskrcnn._C predates TORCH_LIBRARY (its ops are registered from Python): "
                    "rebuild it with python setup.py build_ext --inplace")
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"maskrcnn::{name}", "CPU"), name
        # The schemas Python repeats for an old build must be the C++ ones, text for text.
        assert str(_op(name)._schema) == f"maskrcnn::{name}{_library.SCHEMAS[name]}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("maskrcnn::roi_align", "AutocastCPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("maskrcnn::roi_align", "AutocastCUDA")


def _rois(device, dtype, k):
    g = torch.Generator().manual_seed(k)
    xy = torch.rand(k, 2, generator=g) * 10
    wh = torch.rand(k, 2, generator=g) * 8
    return torch.cat([torch.randint(0, 2, (k, 1), generator=g).float(), xy, xy + wh], 1).to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [3, 0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_roi_align(ext, device, k, channels_last):
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rois = _rois(device, torch.float64, k)
    torch.library.opcheck(_op("roi_align"), (x, rois, 0.5, 3, 2, 2, True))
    torch.library.opcheck(_op("roi_align"), (x.detach().float(), rois.float(), 1.0, 2, 2, 0, False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [3, 0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_roi_align_backward(ext, device, k, channels_last):
    grad = torch.randn(k, 3, 3, 2, device=device)
    torch.library.opcheck(_op("roi_align_backward"),
                          (grad, _rois(device, torch.float32, k), 0.5, 3, 2, 2, 3, 9, 11, 2, True, channels_last))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [6, 0])
def test_opcheck_nms_and_greedy_suppress(ext, device, n):
    xy = torch.rand(n, 2, generator=torch.Generator().manual_seed(n)) * 6
    boxes = torch.cat([xy, xy + 4], 1).to(device)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(1)).to(device)
    torch.library.opcheck(_op("nms"), (boxes, scores, 0.3))
    iou = torch.rand(n, n, generator=torch.Generator().manual_seed(2)).to(device)
    torch.library.opcheck(_op("greedy_suppress"), (iou, 0.5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [(3, 2), (0, 2), (2, 0)])
def test_opcheck_crop_mask_intersection(ext, device, sizes):
    g = torch.Generator().manual_seed(0)
    n, m = sizes
    a = (torch.rand(n, 5, 4, generator=g) > 0.4).to(device)
    b = (torch.rand(m, 3, 6, generator=g) > 0.4).to(device)
    ao = torch.randint(-2, 6, (n, 2), generator=g).to(device)
    bo = torch.randint(-2, 6, (m, 2), generator=g).to(device)
    torch.library.opcheck(_op("crop_mask_intersection"), (a, ao, b, bo))


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 0, 7), (1, 2, 0)])
@pytest.mark.parametrize("per_image", [False, True])
def test_opcheck_match_boxes(ext, shape, per_image):
    # CPU only: on other devices best_matches runs the twin (no kernel is registered there).
    B, G, A = shape
    g = torch.Generator().manual_seed(B + G + A)
    xy = torch.rand(B, G, 2, generator=g) * 10
    gt = torch.cat([xy, xy + 1 + torch.rand(B, G, 2, generator=g) * 5], -1)
    valid = torch.rand(B, G, generator=g) > 0.3
    bxy = torch.rand(B if per_image else 1, A, 2, generator=g) * 10
    boxes = torch.cat([bxy, bxy + 1 + torch.rand(bxy.shape, generator=g) * 5], -1)
    torch.library.opcheck(_op("match_boxes"), (gt, valid, boxes if per_image else boxes[0]))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_runs_roi_align_in_float32_and_returns_the_input_dtype(ext, device):
    x = torch.randn(1, 4, 12, 12, device=device).to(torch.bfloat16).requires_grad_(True)
    rois = torch.tensor([[0.0, 1.3, 2.2, 9.1, 7.7], [0.0, 0.0, 0.0, 12.0, 12.0]], device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = torch.ops.maskrcnn.roi_align(x, rois, 1.0, 3, 3, 2, True)
    assert out.dtype == torch.bfloat16
    # The float32 computation on the same (bf16-representable) values, rounded once at the end.
    want = ops.roi_align_reference(x.detach().float(), rois, 3, 1.0, 2, True).to(torch.bfloat16)
    torch.testing.assert_close(out.detach(), want, atol=0, rtol=0)
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0


def test_fake_kernels_give_shapes_and_data_dependent_sizes(ext):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()):
        x = torch.empty(2, 8, 20, 30).contiguous(memory_format=torch.channels_last)
        out = torch.ops.maskrcnn.roi_align(x, torch.empty(5, 5), 0.25, 7, 6, 2, True)
        assert out.shape == (5, 8, 7, 6) and out.is_contiguous(memory_format=torch.channels_last)
        keep = torch.ops.maskrcnn.nms(torch.empty(9, 4), torch.empty(9), 0.5)
        assert keep.dtype == torch.long and keep.dim() == 1
        assert isinstance(keep.shape[0], torch.SymInt)  # unknown until run: an unbacked size
        inter = torch.ops.maskrcnn.crop_mask_intersection(torch.empty(4, 3, 3, dtype=torch.bool),
                                                          torch.empty(4, 2, dtype=torch.long),
                                                          torch.empty(6, 2, 2, dtype=torch.bool),
                                                          torch.empty(6, 2, dtype=torch.long))
        assert inter.shape == (4, 6) and inter.dtype == torch.long
        best, matched, low = torch.ops.maskrcnn.match_boxes(torch.empty(3, 5, 4), torch.empty(3, 5, dtype=torch.bool),
                                                            torch.empty(11, 4))
        assert best.shape == matched.shape == low.shape == (3, 11)
        assert (best.dtype, matched.dtype, low.dtype) == (torch.float32, torch.long, torch.bool)


def test_public_ops_compile_in_one_graph(ext):
    # fullgraph=True raises on any graph break: the ops trace through their fake kernels.
    def f(x, rois, boxes, scores):
        pooled = ops.roi_align(x, rois, (2, 2), 0.5, 2, True)
        keep = ops.batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.long), 0.5)
        return pooled.sum(), keep

    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    rois = torch.tensor([[0.0, 2.0, 2.0, 20.0, 18.0], [0.0, 4.0, 0.0, 9.0, 30.0]])
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    total, keep = compiled(x, rois, boxes, scores)
    total.backward()
    want_total, want_keep = f(x.detach().requires_grad_(True), rois, boxes, scores)
    torch.testing.assert_close(total, want_total)
    assert keep.tolist() == want_keep.tolist() == [0, 2]
    assert x.grad is not None and x.grad.abs().sum() > 0


# A stand-in for a maskrcnn._C built before TORCH_LIBRARY: only the pybind11 functions, here the
# twins behind the old signatures. The code must then define the ops from Python and use them.
OLD_BUILD = textwrap.dedent(
    """
    import sys, types
    import torch

    def roi_align_forward(input, rois, scale, ph, pw, sr, aligned):
        from maskrcnn.ops.roi_align import roi_align_reference
        CALLS.append("roi_align_forward")
        return roi_align_reference(input, rois, (ph, pw), scale, sr, aligned)

    def roi_align_backward(grad, rois, scale, ph, pw, n, c, h, w, sr, aligned, channels_last=False):
        from maskrcnn.ops.roi_align import roi_align_reference
        CALLS.append("roi_align_backward")
        x = torch.zeros(n, c, h, w, dtype=grad.dtype, requires_grad=True)
        with torch.enable_grad():
            return torch.autograd.grad(roi_align_reference(x, rois, (ph, pw), scale, sr, aligned), x, grad)[0]

    def nms(boxes, scores, thr):
        from maskrcnn.ops.nms import nms_reference
        CALLS.append("nms")
        return nms_reference(boxes, scores, thr)

    def greedy_suppress(iou, thr):
        from maskrcnn.ops.nms import greedy_suppress_reference
        CALLS.append("greedy_suppress")
        return greedy_suppress_reference(iou, thr)

    def crop_mask_intersection(a, ao, b, bo):
        from maskrcnn.ops.masks import crop_mask_intersection_reference
        CALLS.append("crop_mask_intersection")
        return crop_mask_intersection_reference(a, ao, b, bo)

    CALLS = []
    old = types.ModuleType("maskrcnn._C")
    for f in (roi_align_forward, roi_align_backward, nms, greedy_suppress, crop_mask_intersection):
        setattr(old, f.__name__, f)
    old.with_cuda = lambda: False
    sys.modules["maskrcnn._C"] = old

    import maskrcnn.ops as ops
    from maskrcnn.ops import _library
    assert ops.get_ext() is old and _library.defined_in_python()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]], dtype=torch.float64)
    out = ops.roi_align(x, rois, 3, 1.0, 2, True)
    out.sum().backward()
    xr = x.detach().requires_grad_(True)
    ops.roi_align_reference(xr, rois, 3, 1.0, 2, True).sum().backward()
    assert torch.allclose(out, ops.roi_align_reference(x, rois, 3, 1.0, 2, True)) and torch.allclose(x.grad, xr.grad)
    boxes, scores = torch.tensor([[0, 0, 4, 4], [1, 1, 4, 4.0], [5, 5, 9, 9.0]]), torch.tensor([0.9, 0.8, 0.7])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 2]
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    assert ops.mask_nms(masks, scores[:2], 0.5).tolist() == [0]
    torch.library.opcheck(torch.ops.maskrcnn.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.maskrcnn.roi_align.default, (x, rois, 1.0, 3, 3, 2, True))
    # An op added after this build (match_boxes) stays undefined; its public face runs the twin.
    assert not _library.is_defined("match_boxes")
    best, matched, low = ops.best_matches(boxes[None], torch.ones(1, 3, dtype=torch.bool), boxes)
    assert matched.tolist() == [[0, 1, 2]] and low.tolist() == [[True, True, True]]
    print("CALLS", sorted(set(CALLS)))
    """
)


def test_a_build_from_before_the_dispatcher_registers_its_ops_from_python():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MASKRCNN_FORCE_FALLBACK", None)
    proc = subprocess.run([sys.executable, "-c", OLD_BUILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels = ["crop_mask_intersection", "greedy_suppress", "nms", "roi_align_backward", "roi_align_forward"]
    assert f"CALLS {kernels}" in proc.stdout
