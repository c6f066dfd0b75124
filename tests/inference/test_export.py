"""torch.export of the inference model: ``python -m maskrcnn export`` writes one .pt2 file, which a
process without the model code runs (only the compiled ops loaded) with eager's predictions."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from maskrcnn.config import load_config, to_dict
from maskrcnn.formats.image_files import read_image
from maskrcnn.cli.export import main as export_main
from maskrcnn.model import build_model
from maskrcnn.model.mask_head import paste_masks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CANDIDATES = [os.path.join(base, "shared", "data", "dsb2018", "stage1_train")
               for base in (os.path.dirname(REPO), os.path.dirname(os.path.dirname(REPO)))]
DSB_ROOT = next((c for c in _CANDIDATES if os.path.isdir(c)), _CANDIDATES[0])

# Runs the exported file in a fresh process whose path does not hold the repository: only torch
# and the compiled ops' shared library are loaded.
RUNNER = textwrap.dedent(
    """
    import sys, torch
    so, program, images, out = sys.argv[1:5]
    torch.ops.load_library(so)
    module = torch.export.load(program).module()
    assert not any(m.startswith("maskrcnn") for m in sys.modules if m != "maskrcnn._C"), sorted(sys.modules)
    with torch.no_grad():
        torch.save([module(im) for im in torch.load(images)], out)
    """
)


def _dsb_images(size, count):
    """The first ``count`` DSB2018 images of ``size`` (H, W), as Tensor[3, H, W] float in [0, 1]."""
    found = []
    for image_id in sorted(os.listdir(DSB_ROOT)):
        im = read_image(os.path.join(DSB_ROOT, image_id, "images", f"{image_id}.png"), channels=3)
        if tuple(im.shape[-2:]) == size:
            found.append(im)
            if len(found) == count:
                return found
    pytest.skip(f"fewer than {count} DSB2018 images of {size}")


@pytest.mark.skipif(not os.path.isdir(DSB_ROOT), reason="real DSB2018 data (../shared/data/dsb2018) not present")
def test_exported_model_predicts_as_eager_on_dsb_images(tmp_path):
    from maskrcnn.ops import get_ext

    if get_ext() is None:
        pytest.skip("export needs maskrcnn._C")
    cfg = load_config(os.path.join(REPO, "configs", "dsb2018_cpu.yaml"), [])
    torch.manual_seed(0)
    model = build_model(cfg.model, load_weights=False, verbose=False).eval()  # random init, as trained ones
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, weights)
    images = _dsb_images((256, 256), 2)
    out = tmp_path / "model.pt2"
    assert export_main(["--weights", str(weights), "--size", "256", "256", "--out", str(out)]) == 0
    torch.save(images, tmp_path / "images.pt")
    so = glob.glob(os.path.join(REPO, "maskrcnn", "_C*.so"))[0]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, so, str(out), str(tmp_path / "images.pt"),
                           str(tmp_path / "outputs.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        eager = model(images)
    for im, want, (boxes, scores, labels, masks) in zip(images, eager, exported):
        assert len(want) > 0 and boxes.shape == (len(want), 4) and masks.shape == (len(want), 28, 28)
        torch.testing.assert_close(boxes, want.boxes, atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(scores, want.scores, atol=1e-5, rtol=1e-5)
        assert torch.equal(labels, want.labels)
        # The M x M masks pasted into the image as the eager model does: the same crops.
        pasted = paste_masks(masks, boxes, tuple(im.shape[-2:]))
        torch.testing.assert_close(pasted.crops, want.masks.crops, atol=1e-4, rtol=1e-4)
        assert torch.equal(pasted.origins, want.masks.origins)


def test_export_command_reports_a_missing_checkpoint(tmp_path, capsys):
    code = export_main(["--weights", str(tmp_path / "nope.pth"), "--size", "64", "64", "--out",
                        str(tmp_path / "m.pt2")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope.pth" in err[0]
    assert not os.path.exists(tmp_path / "m.pt2")
