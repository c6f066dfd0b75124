"""RoIAlign: hand-computed values, compiled kernels vs the pure-PyTorch twin, gradients."""
import pytest
import torch

from maskrcnn.ops import RoIAlign, roi_align, roi_align_reference
from tests.ops.conftest import DEVICES, cuda_only


def ramp(h=4, w=4, dtype=torch.float64):
    """x[0, 0, i, j] = 4 i + j + 1: bilinear interpolation of it is exact inside the image."""
    i = torch.arange(h, dtype=dtype)[:, None]
    j = torch.arange(w, dtype=dtype)[None, :]
    return (4 * i + j + 1)[None, None]


def random_rois(g, k, n, h, w, scale, dtype=torch.float32):
    """Boxes in image pixels over a feature map of h x w at ``scale``: inside, outside, empty, inverted."""
    ih, iw = h / scale, w / scale
    x1 = torch.rand(k, generator=g, dtype=torch.float64) * iw * 1.4 - iw * 0.2
    y1 = torch.rand(k, generator=g, dtype=torch.float64) * ih * 1.4 - ih * 0.2
    bw = torch.rand(k, generator=g, dtype=torch.float64) * iw * 0.7
    bh = torch.rand(k, generator=g, dtype=torch.float64) * ih * 0.7
    bw[: k // 8] = 0  # zero size
    bh[k // 8 : k // 4] *= 0.01  # thinner than a pixel
    bw[k // 4 : k // 3] *= -0.2  # inverted (x2 < x1)
    b = torch.randint(0, n, (k,), generator=g).double()
    return torch.stack([b, x1, y1, x1 + bw, y1 + bh], 1).to(dtype)


# ----------------------------------------------------------------------------- hand-checked cases
HAND_CASES = [
    # (box, output_size, sampling_ratio, aligned, expected), input = ramp(): value(y, x) = 4y + x + 1.
    # aligned: box [1, 3] -> start 0.5, two samples at 1.0 and 2.0 per axis: mean = 4*1.5 + 1.5 + 1.
    ((1, 1, 3, 3), 1, 2, True, [[8.5]]),
    # not aligned: samples at 1.5 and 2.5: mean = 4*2 + 2 + 1.
    ((1, 1, 3, 3), 1, 2, False, [[11.0]]),
    # samples at 3.5 (clamped to the last pixel, 16) and 4.5 (> H: zero) per axis: 16 / 4.
    ((3, 3, 5, 5), 1, 2, False, [[4.0]]),
    # one sample at -0.5: within a pixel of the edge, clamped to 0 -> value(0, 0).
    ((-1, -1, 1, 1), 1, 1, True, [[1.0]]),
    # adaptive grid: ceil(2/1) x ceil(4/2) = 2 x 2 samples at y in {0, 1}, x in {0, 1} | {2, 3}.
    ((0, 0, 4, 2), (1, 2), 0, True, [[3.5, 5.5]]),
    # zero-size box with an adaptive grid: no samples, 0 (torchvision divides by max(count, 1)).
    ((2, 2, 2, 2), 1, 0, True, [[0.0]]),
    # entirely outside (every sample beyond one pixel): 0.
    ((10, 10, 12, 12), 2, 2, True, [[0.0, 0.0], [0.0, 0.0]]),
]


@pytest.mark.parametrize("box,size,sr,aligned,expected", HAND_CASES)
def test_hand_computed_values(box, size, sr, aligned, expected):
    x = ramp()
    rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
    want = torch.tensor(expected, dtype=torch.float64)[None, None]
    torch.testing.assert_close(roi_align_reference(x, rois, size, 1.0, sr, aligned), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(roi_align(x, rois, size, 1.0, sr, aligned), want, rtol=0, atol=1e-12)


def test_hand_computed_gradient():
    # Box [1, 3] aligned, 2x2 samples at integer positions (1, 2): each gets 1/4 of the gradient.
    x = ramp().requires_grad_(True)
    rois = torch.tensor([[0.0, 1, 1, 3, 3]], dtype=torch.float64)
    roi_align(x, rois, 1, 1.0, 2, True).sum().backward()
    want = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    want[0, 0, 1:3, 1:3] = 0.25
    torch.testing.assert_close(x.grad, want, rtol=0, atol=1e-15)


def test_spatial_scale_and_batch_index():
    # A box on image 1 at scale 1/2 equals the box halved on the same map at scale 1.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = torch.tensor([[1.0, 2.0, 4.0, 14.0, 12.0]], dtype=torch.float64)
    half = rois.clone()
    half[:, 1:] /= 2
    a = roi_align(x, rois, 3, 0.5, 2, True)
    torch.testing.assert_close(a, roi_align(x, half, 3, 1.0, 2, True), rtol=0, atol=1e-12)
    torch.testing.assert_close(a, roi_align(x[1:], half * torch.tensor([0.0, 1, 1, 1, 1]), 3, 1.0, 2, True))


# --------------------------------------------------------------------------- compiled vs twin
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_matches_twin(ext, device, aligned, sampling_ratio, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 13, 17, generator=g, dtype=dtype)
    rois = random_rois(g, 48, 2, 13, 17, 0.25, dtype)
    x, rois = x.to(device), rois.to(device)
    got = roi_align(x, rois, (7, 6), 0.25, sampling_ratio, aligned)
    want = roi_align_reference(x, rois, (7, 6), 0.25, sampling_ratio, aligned)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_types_match_float_twin(ext, device, dtype, atol):
    # Half inputs accumulate in float32: the error is the output's rounding, not the sum's.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 16, 16, generator=g).to(dtype)
    rois = random_rois(g, 40, 2, 16, 16, 0.5)
    x, rois = x.to(device), rois.to(device)
    got = roi_align(x, rois, 7, 0.5, 0, True)
    assert got.dtype == dtype
    want = roi_align_reference(x.float(), rois, 7, 0.5, 0, True)
    torch.testing.assert_close(got.float(), want, rtol=0, atol=atol)
    xg = x.clone().requires_grad_(True)
    gout = torch.randn(got.shape, generator=g).to(dtype).to(device)
    roi_align(xg, rois, 7, 0.5, 0, True).backward(gout)
    xr = x.float().requires_grad_(True)
    roi_align_reference(xr, rois, 7, 0.5, 0, True).backward(gout.float())
    assert xg.grad.dtype == dtype
    torch.testing.assert_close(xg.grad.float(), xr.grad, rtol=0, atol=atol * 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous"])
def test_memory_layouts(ext, device, layout):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 6, 12, 14, generator=g, dtype=torch.float64)
    rois = random_rois(g, 30, 2, 12, 14, 0.5, torch.float64)
    if layout == "channels_last":
        x = base.to(device).to(memory_format=torch.channels_last)
    else:  # every other channel of a wider map, and transposed twice
        wide = torch.randn(2, 12, 14, 12, generator=g, dtype=torch.float64)
        wide[:, ::2] = base.transpose(2, 3)
        x = wide.to(device)[:, ::2].transpose(2, 3)
        assert not x.is_contiguous() and torch.equal(x.cpu(), base)
    rois = rois.to(device)
    xg = x.detach().clone().requires_grad_(True) if layout == "channels_last" else x.detach().requires_grad_(True)
    out = roi_align(xg, rois, 5, 0.5, 2, True)
    want = roi_align_reference(base.to(device), rois, 5, 0.5, 2, True)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)
    out.backward(gout)
    br = base.to(device).requires_grad_(True)
    roi_align_reference(br, rois, 5, 0.5, 2, True).backward(gout)
    torch.testing.assert_close(xg.grad, br.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradcheck(ext, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.3, 0.7, 9.1, 8.2], [1, -2.0, 3.1, 5.5, 13.0], [1, 4.0, 4.0, 4.0, 4.0], [0, 6.0, 1.0, 11.9, 6.6]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (3, 2), 0.5, sampling_ratio, aligned), (x,))
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    f = lambda t: roi_align(t, rois, (3, 2), 0.5, sampling_ratio, aligned)  # noqa: E731
    assert torch.autograd.gradcheck(f, (xc,), fast_mode=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_backward_matches_twin(ext, device, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 11, 9, generator=g, dtype=torch.float64).to(device)
    rois = random_rois(g, 40, 2, 11, 9, 0.5, torch.float64).to(device)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya = roi_align(a, rois, 4, 0.5, sampling_ratio, aligned)
    yb = roi_align_reference(b, rois, 4, 0.5, sampling_ratio, aligned)
    gout = torch.randn(ya.shape, generator=g, dtype=torch.float64).to(device)
    ya.backward(gout)
    yb.backward(gout)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(ext, device):
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    rois = torch.zeros((0, 5), device=device)
    out = roi_align(x, rois, 7, 0.25)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    empty_batch = torch.zeros((0, 3, 8, 8), device=device)
    assert roi_align(empty_batch, rois, 2).shape == (0, 3, 2, 2)
    no_channels = torch.zeros((1, 0, 8, 8), device=device)
    assert roi_align(no_channels, torch.tensor([[0.0, 1, 1, 4, 4]], device=device), 2).shape == (1, 0, 2, 2)


def test_rois_in_another_dtype_and_module(ext):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 10, 10, generator=g)
    rois = torch.tensor([[0, 1.2, 2.3, 7.4, 8.8]], dtype=torch.float64)
    layer = RoIAlign((4, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(layer(x, rois), roi_align_reference(x, rois.float(), 4, 1.0, 2, True))
    assert "output_size=(4, 4)" in repr(layer)


def test_bad_inputs_raise_clear_errors(ext):
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match=r"rois must be \[K, 5\]"):
        roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"input must be \[N, C, H, W\]"):
        roi_align(x[0], torch.zeros(1, 5), 2)
    with pytest.raises(RuntimeError, match=r"rois\[1, 0\] = 3 is not a batch index in \[0, 1\)"):
        roi_align(x, torch.tensor([[0.0, 0, 0, 2, 2], [3.0, 0, 0, 2, 2]]), 2)
    with pytest.raises(RuntimeError, match="output size must be positive"):
        roi_align(x, torch.zeros(1, 5), (0, 2))


@cuda_only
def test_cuda_matches_cpu_compiled():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 64, 50, 40, generator=g)
    rois = random_rois(g, 300, 2, 50, 40, 0.25)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xc = x.to(memory_format=fmt)
        cpu = roi_align(xc, rois, 7, 0.25, 0, True)
        gpu = roi_align(xc.cuda(), rois.cuda(), 7, 0.25, 0, True)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("convert", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_cpu_nchw_through_nhwc_kernel(ext, monkeypatch, convert, sampling_ratio):
    # An NCHW input runs either the NCHW kernel or (converted) the NHWC one: same numbers, and the
    # output and gradient stay NCHW.
    import importlib

    ra = importlib.import_module("maskrcnn.ops.roi_align")  # the module (the package exports the function)
    for name in ("CPU_NHWC_MIN_SAMPLES_PER_PIXEL", "CPU_NHWC_MIN_SAMPLES_PER_PIXEL_GRAD"):
        monkeypatch.setattr(ra, name, 0.0 if convert else float("inf"))
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 13, 10, generator=g, dtype=torch.float64)
    rois = random_rois(g, 25, 2, 13, 10, 0.5, torch.float64)
    assert ra._cpu_convert_to_nhwc(x, rois, (3, 4), sampling_ratio) == convert
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya = roi_align(a, rois, (3, 4), 0.5, sampling_ratio, True)
    yb = roi_align_reference(b, rois, (3, 4), 0.5, sampling_ratio, True)
    assert ya.is_contiguous()
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    gout = torch.randn(ya.shape, generator=g, dtype=torch.float64)
    ya.backward(gout)
    yb.backward(gout)
    assert a.grad.is_contiguous()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_cpu_nhwc_conversion_only_when_it_pays():
    from maskrcnn.ops.roi_align import _cpu_convert_to_nhwc

    big = torch.zeros(2, 256, 200, 200)  # 80,000 pixels
    few = torch.zeros(10, 5)
    many = torch.zeros(512, 5)
    assert not _cpu_convert_to_nhwc(big, few, (7, 7), 2)  # 1,960 samples
    assert _cpu_convert_to_nhwc(big, many, (7, 7), 2)  # 100,352 samples
    assert not _cpu_convert_to_nhwc(big, many, (7, 7), 2, needs_grad=True)  # the gradient's conversion too
    assert _cpu_convert_to_nhwc(big, many, (14, 14), 2, needs_grad=True)  # 401,408 samples
    assert not _cpu_convert_to_nhwc(big.to(memory_format=torch.channels_last), many, (7, 7), 2)  # already NHWC
    assert not _cpu_convert_to_nhwc(torch.zeros(1, 1, 20, 20), many, (7, 7), 2)  # one channel: same layout
