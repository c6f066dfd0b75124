import pytest
import torch

from maskrcnn.config import AugmentConfig
from maskrcnn.data.transforms import copy_paste, geometric, photometric, pipeline
from maskrcnn.structures import Instances, MaskList, Sample

H, W = 12, 16


def _l_shape():
    m = torch.zeros(H, W, dtype=torch.bool)
    m[2:9, 3] = True  # vertical bar
    m[8, 3:8] = True  # foot
    return m


def _sample(dense: torch.Tensor, labels=None, image=None) -> Sample:
    """A sample whose masks are ``dense [N, H, W]`` and whose image encodes pixel positions."""
    n, h, w = dense.shape
    if image is None:
        image = (torch.arange(h * w, dtype=torch.float32).reshape(1, h, w) / (h * w))
    ml = MaskList.from_dense(dense)
    labels = torch.arange(n) if labels is None else labels
    return Sample(image, Instances((h, w), ml.tight_boxes(), labels, None, ml), "t", {})


def _two_masks():
    a = torch.zeros(H, W, dtype=torch.bool)
    a[0:3, 0:4] = True  # touches the top-left corner
    return torch.stack([_l_shape(), a])


def _check_consistent(s: Sample):
    inst = s.instances
    assert tuple(s.image.shape[-2:]) == inst.image_size
    assert torch.equal(inst.boxes, inst.masks.tight_boxes())
    assert bool((inst.masks.areas() > 0).all())


def test_hflip_of_l_shape_equals_flipped_dense():
    s = _sample(_two_masks())
    out = geometric.hflip(s)
    _check_consistent(out)
    assert torch.equal(out.instances.masks.to_dense(), _two_masks().flip(-1))
    assert torch.equal(out.image, s.image.flip(-1))
    assert out.instances.boxes[0].tolist() == [W - 8, 2, W - 3, 9]


def test_vflip_of_l_shape_equals_flipped_dense():
    out = geometric.vflip(_sample(_two_masks()))
    _check_consistent(out)
    assert torch.equal(out.instances.masks.to_dense(), _two_masks().flip(-2))


def test_rot90_matches_torch_rot90_and_four_turns_are_identity():
    s = _sample(_two_masks())
    for k in range(1, 4):
        out = geometric.rot90(s, k)
        _check_consistent(out)
        assert out.instances.image_size == ((W, H) if k % 2 else (H, W))
        assert torch.equal(out.instances.masks.to_dense(), torch.rot90(_two_masks(), k, dims=(1, 2)))
        assert torch.equal(out.image, torch.rot90(s.image, k, dims=(1, 2)))
    back = geometric.rot90(geometric.rot90(geometric.rot90(geometric.rot90(s, 1), 1), 1), 1)
    assert torch.equal(back.image, s.image)
    assert torch.equal(back.instances.masks.to_dense(), _two_masks())
    assert torch.equal(back.instances.boxes, s.instances.boxes)


def test_crop_keeps_exactly_the_window_pixels_and_drops_small_remnants():
    dense = _two_masks()
    s = _sample(dense)
    # Window x in [2, 10), y in [1, 9): the L keeps rows 2..8 of column 3 and the foot up to x=7;
    # the corner box keeps x in [2, 4), y in [1, 3) = 4 pixels.
    out = geometric.crop(s, 2, 1, 8, 8, min_area=0)
    _check_consistent(out)
    assert torch.equal(out.instances.masks.to_dense(), dense[:, 1:9, 2:10])
    assert torch.equal(out.image, s.image[:, 1:9, 2:10])
    dropped = geometric.crop(s, 2, 1, 8, 8, min_area=5)  # the 4-pixel remnant of the box goes
    assert dropped.instances.labels.tolist() == [0]
    assert torch.equal(dropped.instances.masks.to_dense()[0], dense[0, 1:9, 2:10])
    # An uncut object smaller than min_area stays.
    tiny = torch.zeros(1, H, W, dtype=torch.bool)
    tiny[0, 5, 5] = True
    kept = geometric.crop(_sample(tiny), 4, 4, 4, 4, min_area=5)
    assert len(kept.instances) == 1
    with pytest.raises(ValueError, match="not inside"):
        geometric.crop(s, 10, 0, 8, 8)


def test_affine_identity_and_quarter_turn_match_exact_transforms():
    sq = torch.zeros(2, 14, 14, dtype=torch.bool)
    sq[0, 2:9, 3] = True
    sq[0, 8, 3:8] = True
    sq[1, 10:13, 9:12] = True
    s = _sample(sq)
    same = geometric.affine(s, 0.0, 1.0)
    _check_consistent(same)
    assert torch.equal(same.instances.masks.to_dense(), sq)
    assert torch.allclose(same.image, s.image, atol=1e-6)
    turned = geometric.affine(s, 90.0, 1.0)
    _check_consistent(turned)
    assert torch.equal(turned.instances.masks.to_dense(), torch.rot90(sq, 1, dims=(1, 2)))
    assert torch.allclose(turned.image, torch.rot90(s.image, 1, dims=(1, 2)), atol=1e-5)


def test_affine_scale_two_doubles_a_square():
    m = torch.zeros(1, H, W, dtype=torch.bool)
    m[0, 4:8, 6:10] = True
    out = geometric.affine(_sample(m), 0.0, 2.0)
    _check_consistent(out)
    assert out.instances.image_size == (2 * H, 2 * W)
    expect = torch.zeros(2 * H, 2 * W, dtype=torch.bool)
    expect[8:16, 12:20] = True
    assert torch.equal(out.instances.masks.to_dense()[0], expect)


def test_affine_rotation_keeps_areas_and_drops_objects_rotated_out():
    big = torch.zeros(2, 40, 40, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    big[0] = (yy - 20) ** 2 + (xx - 20) ** 2 < 36  # a disc at the centre
    big[1, 0:2, 0:2] = True  # a corner speck: a 30 degree turn moves it outside the image
    out = geometric.affine(_sample(big), 30.0, 1.0)
    _check_consistent(out)
    assert out.instances.labels.tolist() == [0]
    area = float(out.instances.masks.areas()[0])
    assert abs(area - float(big[0].sum())) <= 6


def test_photometric_blur_noise_leave_instances_and_stay_in_range():
    s = _sample(_two_masks())
    g = torch.Generator().manual_seed(0)
    for t in (photometric.Photometric(0.2, 0.5, 0.5), photometric.Blur(), photometric.Noise(0.1)):
        out = t(s, g)
        assert out.instances is s.instances
        assert float(out.image.min()) >= 0 and float(out.image.max()) <= 1
        assert out.image.shape == s.image.shape
    flat = torch.full((1, 9, 9), 0.4)
    assert torch.allclose(photometric.gaussian_blur(flat, 1.0), flat, atol=1e-6)
    assert torch.allclose(photometric.photometric(flat, 0.1, 1.0, 1.0), flat + 0.1)


def test_compose_is_deterministic_given_the_generator_and_boxes_stay_tight():
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5, rotate_degrees=20, rotate_prob=0.7, scale_range=(0.8, 1.3),
                        crop_size=(10, 10), min_area=2, brightness=0.1, contrast=0.2, gamma=0.2, blur_prob=0.5,
                        noise_std=0.05)
    pipe = pipeline.build_transforms(cfg)
    assert len(pipe) == 8
    s = _sample(_two_masks())
    outs = []
    for seed in range(6):
        a = pipe(s, torch.Generator().manual_seed(seed))
        b = pipe(s, torch.Generator().manual_seed(seed))
        assert torch.equal(a.image, b.image)
        assert torch.equal(a.instances.masks.to_dense(), b.instances.masks.to_dense())
        if len(a.instances):
            _check_consistent(a)
        outs.append(round(float(a.image.sum()), 4))
    assert len(set(outs)) > 1  # the seed changes the outcome


def test_copy_paste_moves_pixels_and_occludes_targets():
    dense = torch.zeros(1, H, W, dtype=torch.bool)
    dense[0, 2:6, 2:6] = True
    target = _sample(dense, image=torch.zeros(1, H, W))
    src_mask = torch.zeros(1, H, W, dtype=torch.bool)
    src_mask[0, 0:2, 0:3] = True
    source = _sample(src_mask, labels=torch.tensor([5]), image=torch.ones(1, H, W))
    out = copy_paste.paste_instances(target, source, torch.tensor([0]), dx=4, dy=4, min_area=0)
    _check_consistent(out)
    d = out.instances.masks.to_dense()
    assert out.instances.labels.tolist() == [0, 5]
    pasted = torch.zeros(H, W, dtype=torch.bool)
    pasted[4:6, 4:7] = True
    assert torch.equal(d[1], pasted)
    assert torch.equal(d[0], dense[0] & ~pasted)  # the target lost the covered pixels
    assert torch.equal(out.image[0] > 0.5, pasted)
    # An occluded remnant below min_area is dropped.
    gone = copy_paste.paste_instances(target, source, torch.tensor([0]), dx=2, dy=2, min_area=15)
    assert gone.instances.labels.tolist() == [5]


def test_copy_paste_batch_transform_is_deterministic_and_consistent():
    cp = pipeline.build_batch_transform(AugmentConfig(copy_paste_prob=1.0))
    assert cp is not None and pipeline.build_batch_transform(AugmentConfig()) is None
    a = _sample(_two_masks())
    m = torch.zeros(1, H, W, dtype=torch.bool)
    m[0, 5:9, 9:13] = True
    b = _sample(m, labels=torch.tensor([1]))
    r1 = cp([a, b], torch.Generator().manual_seed(3))
    r2 = cp([a, b], torch.Generator().manual_seed(3))
    for x, y in zip(r1, r2):
        assert torch.equal(x.image, y.image)
        _check_consistent(x)
    assert sum(len(x.instances) for x in r1) > len(a.instances) + len(b.instances) - 1


def test_transforms_handle_images_without_objects():
    s = Sample(torch.rand(1, H, W), Instances.empty((H, W), with_masks=True), "e", {})
    g = torch.Generator().manual_seed(0)
    for t in (geometric.HFlip(), geometric.VFlip(), geometric.Rot90(), geometric.Affine(10, (0.9, 1.1)), geometric.RandomCrop((8, 8))):
        out = t(s, g)
        assert len(out.instances) == 0
        assert tuple(out.image.shape[-2:]) == out.instances.image_size


# ------------------------------------------------------------------ colour and stain
def _rgb_sample():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, H, W, generator=g) * 0.9 + 0.05
    return _sample(_two_masks(), image=image)


def test_invert_maps_image_to_one_minus_image_and_keeps_instances():
    s = _rgb_sample()
    out = photometric.Invert()(s, torch.Generator())
    assert torch.allclose(out.image, 1 - s.image)
    assert out.instances is s.instances
    assert torch.allclose(photometric.invert(photometric.invert(s.image)), s.image)


def test_to_gray_gives_equal_channels_holding_the_bt601_luma():
    s = _rgb_sample()
    out = photometric.ToGray()(s, torch.Generator())
    assert out.image.shape == s.image.shape
    luma = 0.299 * s.image[0] + 0.587 * s.image[1] + 0.114 * s.image[2]
    for c in range(3):
        assert torch.allclose(out.image[c], luma, atol=1e-6)
    gray = s.image[:1].expand(3, -1, -1)
    assert torch.allclose(photometric.to_gray(gray), gray, atol=1e-6)  # gray stays as it was
    one = s.image[:1]
    assert photometric.to_gray(one) is one


def test_channel_shuffle_permutes_channels_and_leaves_gray_images_alone():
    s = _rgb_sample()
    seen = set()
    for seed in range(12):
        out = photometric.ChannelShuffle()(s, torch.Generator().manual_seed(seed))
        perm = []
        for c in range(3):
            match = [k for k in range(3) if torch.equal(out.image[c], s.image[k])]
            assert len(match) == 1
            perm.append(match[0])
        assert sorted(perm) == [0, 1, 2]
        seen.add(tuple(perm))
    assert len(seen) > 2  # several permutations, not one fixed order
    gray = _sample(_two_masks(), image=torch.rand(1, H, W).expand(3, -1, -1).contiguous())
    assert torch.equal(photometric.ChannelShuffle()(gray, torch.Generator().manual_seed(1)).image, gray.image)


def test_stain_jitter_identity_and_scaling_one_stain():
    s = _rgb_sample()
    same = photometric.stain_jitter(s.image, [1, 1, 1], [0, 0, 0])
    assert torch.allclose(same, s.image, atol=1e-5)
    # A pixel holding only haematoxylin at concentration c: I = exp(-c * h). Doubling alpha_H
    # doubles its optical density and leaves the other stains at zero.
    h = photometric._STAIN_OD[0]
    img = torch.exp(-0.5 * h).float().view(3, 1, 1).expand(3, 4, 4).contiguous()
    out = photometric.stain_jitter(img, [2.0, 1.0, 1.0], [0, 0, 0])
    assert torch.allclose(out[:, 0, 0].double(), torch.exp(-1.0 * h), atol=1e-5)
    # beta adds stain everywhere: white turns into the eosin colour.
    white = torch.ones(3, 2, 2)
    pink = photometric.stain_jitter(white, [1, 1, 1], [0, 0.3, 0])
    assert torch.allclose(pink[:, 0, 0].double(), torch.exp(-0.3 * photometric._STAIN_OD[1]), atol=1e-5)
    # The random transform stays in range, keeps the instances and tints a gray image.
    gray = _sample(_two_masks(), image=torch.rand(1, H, W).expand(3, -1, -1).contiguous())
    out = photometric.StainJitter(0.3)(gray, torch.Generator().manual_seed(0))
    assert out.instances is gray.instances
    assert float(out.image.min()) >= 0 and float(out.image.max()) <= 1
    assert not torch.equal(out.image[0], out.image[1])
    one = torch.rand(1, H, W)
    assert photometric.stain_jitter(one, [2, 2, 2], [0.1, 0.1, 0.1]) is one


def test_colour_steps_are_built_in_order_from_the_config():
    cfg = AugmentConfig(hflip=0, vflip=0, to_gray=0.1, invert=0.5, stain_jitter=0.5, stain_sigma=0.2,
                        channel_shuffle=0.3)
    pipe = pipeline.build_transforms(cfg)
    assert [type(t).__name__ for _, t in pipe.steps] == ["ToGray", "Invert", "StainJitter", "ChannelShuffle"]
    assert [p for p, _ in pipe.steps] == [0.1, 0.5, 0.5, 0.3]
    assert len(pipeline.build_transforms(AugmentConfig(hflip=0, vflip=0, stain_jitter=0.5, stain_sigma=0))) == 0
    # Deterministic given the generator; every image stays in [0, 1].
    s = _rgb_sample()
    for seed in range(5):
        a = pipe(s, torch.Generator().manual_seed(seed))
        b = pipe(s, torch.Generator().manual_seed(seed))
        assert torch.equal(a.image, b.image)
        assert float(a.image.min()) >= 0 and float(a.image.max()) <= 1
