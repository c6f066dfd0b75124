import pytest
import torch

from maskrcnn.inference.tta import View, parse_tta, parse_view, resize_masks
from maskrcnn.ops import crop_mask_iou
from maskrcnn.structures import MaskList
from tests.inference.stub_model import IdStubModel, draw_objects, random_blobs

DIHEDRAL = ["identity", "hflip", "vflip", "transpose", "rot90", "rot180", "rot270", "rot90+hflip",
            "hflip+transpose+vflip", "rot90+rot90+rot90+vflip"]
SCALE2 = ["scale=2", "scale=2+rot90", "vflip+scale=2", "transpose+scale=2+hflip"]
H, W = 29, 41  # odd and unequal, so a wrong axis or an off-by-one shows


@pytest.fixture(scope="module")
def blobs():
    return random_blobs(12, H, W, seed=3)


def test_d4_is_eight_distinct_views_and_rot90_is_torch_rot90():
    views = parse_tta("d4")
    assert len(views) == 8
    img = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7)
    outs = [v.apply_image(img) for v in views]
    assert len({tuple(o.flatten().tolist()) + tuple(o.shape) for o in outs}) == 8
    assert torch.equal(parse_view("rot90").apply_image(img), torch.rot90(img, 1, (-2, -1)))
    assert torch.equal(parse_view("rot270").apply_image(img), torch.rot90(img, 3, (-2, -1)))
    assert torch.equal(parse_view("rot180").apply_image(img), torch.rot90(img, 2, (-2, -1)))


def test_parse_tta_errors_and_identity_first():
    views = parse_tta(["hflip", "scale=1.25"])
    assert views[0].steps == () and views[0].scale == 1.0 and len(views) == 3
    with pytest.raises(ValueError, match="same transform"):
        parse_tta("rot180,hflip+vflip")
    with pytest.raises(ValueError, match="unknown TTA transform 'flop'"):
        parse_tta("hflip,flop")
    with pytest.raises(ValueError, match="positive"):
        parse_tta("scale=-1")


@pytest.mark.parametrize("spec", DIHEDRAL)
def test_dihedral_round_trip_through_a_model_is_exact(spec, blobs):
    """Forward-transform the image, predict on the view, map back: exactly the drawn objects."""
    view = parse_view(spec)
    image = draw_objects(blobs)
    pred = IdStubModel()([view.apply_image(image)])[0]
    assert pred.image_size == view.view_size((H, W))
    back = view.invert(pred, (H, W))
    assert back.image_size == (H, W)
    dense = back.masks.to_dense()
    assert torch.equal(dense > 0, blobs)
    assert torch.equal(dense[blobs], torch.full((int(blobs.sum()),), 0.9))  # soft values moved, not resampled
    assert torch.equal(back.boxes, MaskList.from_dense(blobs).tight_boxes())


@pytest.mark.parametrize("spec", DIHEDRAL + SCALE2)
def test_masks_and_boxes_forward_then_inverse_are_exact(spec, blobs):
    view = parse_view(spec)
    ml = MaskList.from_dense(blobs, pad=1)
    fwd = view.apply_masks(ml)
    assert fwd.image_size == view.view_size((H, W))
    # The forward map agrees with transforming the masks as an image (nearest upsampling for scale 2).
    as_image = blobs.float()
    for step in view.steps:
        as_image = View(steps=(step,)).apply_image(as_image)
    if view.scale == 2:
        as_image = as_image.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    assert torch.equal(fwd.to_dense(), as_image > 0.5)
    back = view.invert_masks(fwd, (H, W))
    assert torch.equal(back.to_dense(), blobs)
    boxes = ml.tight_boxes()
    fwd_boxes = view.apply_boxes(boxes, (H, W))
    assert torch.equal(fwd_boxes, fwd.tight_boxes())
    assert torch.equal(view.invert_boxes(fwd_boxes, (H, W)), boxes)


def test_soft_masks_through_transpose_and_flips_keep_values():
    g = torch.Generator().manual_seed(0)
    dense = torch.rand((3, H, W), generator=g) * (torch.rand((3, H, W), generator=g) < 0.3)
    ml = MaskList.from_dense(dense, pad=2)
    for spec in ("rot90+hflip", "transpose+vflip"):
        v = parse_view(spec)
        assert torch.equal(v.invert_masks(v.apply_masks(ml), (H, W)).to_dense(), dense)


def test_non_integer_scale_round_trip_is_close(blobs):
    big = random_blobs(8, 60, 80, seed=5, rmin=5, rmax=9)
    ml = MaskList.from_dense(big)
    for spec in ("scale=1.25", "scale=0.8+hflip", "scale=1.5+rot90"):
        v = parse_view(spec)
        back = v.invert_masks(v.apply_masks(ml), (60, 80))
        a = back.threshold()
        iou = crop_mask_iou(a.crops, a.origins, ml.crops, ml.origins).diagonal()
        assert iou.min() > 0.8, (spec, iou)
        # boxes map linearly, so their round trip is exact up to float rounding
        b = ml.tight_boxes()
        assert torch.allclose(v.invert_boxes(v.apply_boxes(b, (60, 80)), (60, 80)), b, atol=1e-4)


def test_resize_soft_mask_keeps_interior_values_and_zero_outside():
    crops = torch.zeros((1, 12, 12))
    crops[0, 2:10, 2:10] = 0.7
    ml = MaskList(crops, torch.tensor([[5, 3]]), (20, 30))
    up = resize_masks(ml, (40, 60))
    assert up.is_soft and up.image_size == (40, 60)
    d = up.to_dense()[0]
    # the square covers image x 7..14, y 5..12, so x 14..29, y 10..25 after scaling; bilinear
    # sampling blurs one pixel either side of the edge and conserves the mass (x4).
    assert torch.allclose(d[11:25, 15:29], torch.full((14, 14), 0.7))
    assert d[10:26, 14:30].min() > 0.3
    assert d[:9].abs().sum() == 0 and d[27:].abs().sum() == 0 and d[:, :13].abs().sum() == 0
    assert d.sum().item() == pytest.approx(0.7 * 64 * 4, rel=1e-5)


def test_invert_rejects_predictions_of_the_wrong_size(blobs):
    view = parse_view("rot90")
    pred = IdStubModel()([draw_objects(blobs)])[0]  # not rotated: H x W instead of W x H
    with pytest.raises(ValueError, match="expected"):
        view.invert(pred, (H, W))
