"""The pure-PyTorch fallback: forced by MASKRCNN_FORCE_FALLBACK=1, and used (warning once) without _C."""
import glob
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs every public op twice; prints the warnings seen and whether the compiled module was imported.
PROBE = textwrap.dedent(
    """
    import sys, warnings
    import torch
    {prelude}
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as seen:
        import maskrcnn.ops as ops
        from maskrcnn.ops import _ext
        x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
        rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]], dtype=torch.float64)
        boxes = torch.tensor([[0, 0, 4, 4], [1, 1, 4, 4.0]])
        scores = torch.tensor([0.9, 0.8])
        masks = torch.zeros(2, 8, 8, dtype=torch.bool)
        masks[:, 2:5, 2:5] = True
        for _ in range(2):
            a = ops.roi_align(x, rois, 3, 1.0, 2, True)
            assert torch.equal(a, ops.roi_align_reference(x, rois, 3, 1.0, 2, True))
            assert ops.nms(boxes, scores, 0.5).tolist() == [0]
            assert ops.mask_nms(masks, scores, 0.5).tolist() == [0]
            assert ops.mask_iou(masks, masks).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    print("EXT", _ext._C is not None, "LOADED", "maskrcnn._C" in sys.modules)
    print("WARNINGS", sum("compiled ops not available" in str(w.message) for w in seen))
    """
)


def run_probe(prelude="", force=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MASKRCNN_FORCE_FALLBACK", None)
    if force is not None:
        env["MASKRCNN_FORCE_FALLBACK"] = force
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(prelude=prelude)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_force_fallback_uses_twins_silently():
    out = run_probe(force="1")
    assert "EXT False LOADED False" in out
    assert "WARNINGS 0" in out


def test_missing_extension_warns_once():
    # A None entry in sys.modules makes `from maskrcnn import _C` raise ImportError, as when unbuilt.
    out = run_probe(prelude="sys.modules['maskrcnn._C'] = None")
    assert "EXT False" in out
    assert "WARNINGS 1" in out


def test_extension_loads_when_imported_before_torch():
    # Takes no `ext` fixture, so that it can fail: it runs whenever a built module is present or
    # the extension is required (MASKRCNN_REQUIRE_EXT=1, as in CI), and skips only when neither.
    built = glob.glob(os.path.join(REPO, "maskrcnn", "_C*.so")) + glob.glob(os.path.join(REPO, "maskrcnn", "_C*.pyd"))
    if not built and os.environ.get("MASKRCNN_REQUIRE_EXT", "0") != "1":
        pytest.skip("maskrcnn._C is not built")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MASKRCNN_FORCE_FALLBACK", None)
    # `import maskrcnn.ops` as a script's first import must still find the compiled module.
    code = ("import maskrcnn.ops as ops; e = ops.get_ext(); print('EXT', e is not None); "
            "print('KERNELS', sorted(n for n in dir(e) if not n.startswith('_')))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "EXT True" in proc.stdout, proc.stderr
    kernels = ["crop_mask_intersection", "greedy_suppress", "match_boxes", "nms", "roi_align_backward", "roi_align_forward", "with_cuda"]
    assert f"KERNELS {kernels}" in proc.stdout
