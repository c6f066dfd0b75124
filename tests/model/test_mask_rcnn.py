import warnings

import pytest
import torch

from maskrcnn.model import build_model
from maskrcnn.structures import Instances
from tests.model.helpers import disks_sample, tiny_model_config

LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_model_config())


def test_training_losses_and_gradients_reach_every_stage(model):
    model.train()
    a = disks_sample(64, 80)
    b = disks_sample(48, 64, disks=((20, 20, 7, 1), (30, 45, 9, 0)))
    losses = model([a[0], b[0]], [a[1], b[1]])
    assert set(losses) == LOSS_KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    model.zero_grad()
    sum(losses.values()).backward()
    for name in ("backbone.stem.conv1.weight", "fpn.output.0.weight", "rpn.head.objectness_logits.weight",
                 "rpn.head.anchor_deltas.weight", "roi_heads.box_predictor.bbox_pred.weight",
                 "roi_heads.mask_head.predictor.weight"):
        g = model.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name


def test_image_without_objects(model):
    image, gt = disks_sample(64, 64, disks=())
    model.train()
    losses = model([image], [gt])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box"].item() == 0.0 and losses["loss_box"].item() == 0.0
    sum(losses.values()).backward()  # mask head stays in the graph with zero gradient
    model.eval()
    with torch.no_grad():
        (out,) = model([image])
    assert isinstance(out, Instances) and out.image_size == (64, 64)
    assert out.scores is not None and out.masks is not None and len(out.masks) == len(out)


def test_no_proposals_gives_empty_outputs(model):
    image, _ = disks_sample(64, 64)
    model.eval()
    saved = model.rpn.post_nms_topk
    model.rpn.post_nms_topk = (saved[0], 0)  # as when every proposal is dropped (e.g. non-finite)
    try:
        with torch.no_grad():
            (out,) = model([image])
    finally:
        model.rpn.post_nms_topk = saved
    assert len(out) == 0 and out.masks.crops.shape[0] == 0 and out.image_size == (64, 64)


def test_overfits_one_image():
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    image, gt = disks_sample(64, 64, disks=((20, 22, 8, 0), (44, 40, 10, 1)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    model.train()
    history = []
    for _ in range(30):
        losses = model([image], [gt])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-3:]) / 3 < 0.5 * sum(history[:3]) / 3, history


def test_eval_outputs_caps_soft_masks_and_original_coordinates():
    torch.manual_seed(0)
    cfg = tiny_model_config("model.roi_heads.score_thresh=0.0", "model.roi_heads.detections_per_image=7",
                            "model.input.min_size_test=96", "model.input.max_size_test=200")
    model = build_model(cfg).eval()
    image, _ = disks_sample(48, 60)
    with torch.no_grad():
        (out,) = model([image])  # resized x2 inside the model
    assert 0 < len(out) <= 7
    assert out.image_size == (48, 60) and out.masks.image_size == (48, 60)
    assert (out.boxes[:, 0::2] <= 60).all() and (out.boxes[:, 1::2] <= 48).all() and (out.boxes >= 0).all()
    assert out.masks.is_soft and out.masks.crops.dtype == torch.float32
    assert (out.masks.crops >= 0).all() and (out.masks.crops <= 1).all()
    # each crop covers its box (+1 px) in original pixels
    x0, y0 = out.masks.origins[:, 0], out.masks.origins[:, 1]
    assert (x0 <= out.boxes[:, 0].floor()).all() and (y0 <= out.boxes[:, 1].floor()).all()
    assert (x0 >= out.boxes[:, 0].floor() - 1).all() and (y0 >= out.boxes[:, 1].floor() - 1).all()
    assert out.labels.dtype == torch.long and (out.labels < 2).all()
    assert (out.scores[:-1] >= out.scores[1:]).all()
    model.roi_heads.mask_inference_chunk = 2  # masks computed 2 detections at a time: same result
    with torch.no_grad():
        chunked = model([image, image.flip(-1)])[0]  # two images: chunks span both
    torch.testing.assert_close(chunked.masks.crops, out.masks.crops)


def test_postprocess_maps_back_to_original_pixels(model):
    boxes = torch.tensor([[20.0, 10.0, 60.0, 50.0]])  # in an image resized by (sx, sy) = (2, 1.5)
    dets = [(boxes, torch.tensor([0.9]), torch.tensor([1]), torch.ones(1, 28, 28))]
    (out,) = model.postprocess(dets, torch.tensor([[2.0, 1.5]]), [(40, 35)])
    torch.testing.assert_close(out.boxes, torch.tensor([[10.0, 10.0 / 1.5, 30.0, 33.3333]]), atol=1e-3, rtol=0)
    assert out.image_size == (40, 35) and out.masks.origins.tolist() == [[9, 5]]
    torch.testing.assert_close(out.masks.threshold(0.5).tight_boxes(), torch.tensor([[10.0, 7.0, 30.0, 33.0]]))


def test_grayscale_is_repeated_for_rgb_models():
    torch.manual_seed(0)
    model = build_model(tiny_model_config("model.input.in_channels=3", "model.input.pixel_mean=[0.4,0.4,0.4]",
                                          "model.input.pixel_std=[0.3]", "model.roi_heads.score_thresh=0.0")).eval()
    gray, _ = disks_sample(64, 64)
    with torch.no_grad():
        a = model([gray])[0]
        b = model([gray.repeat(3, 1, 1)])[0]
    assert len(a) > 0
    torch.testing.assert_close(a.boxes, b.boxes)
    torch.testing.assert_close(a.scores, b.scores)


def test_predict_thresholds_masks(model):
    image, _ = disks_sample(64, 64)
    model.eval()
    with torch.no_grad():
        soft = model([image])[0]
    model.train()
    hard = model.predict([image], mask_threshold=0.3)[0]
    assert model.training  # mode restored
    assert hard.masks.crops.dtype == torch.bool
    assert torch.equal(hard.masks.crops, soft.masks.crops >= 0.3)


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    cfg = tiny_model_config("model.roi_heads.score_thresh=0.0")
    ref = build_model(cfg).eval()
    cl = build_model(tiny_model_config("model.roi_heads.score_thresh=0.0", "model.channels_last=true")).eval()
    cl.load_state_dict(ref.state_dict())
    assert cl.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    image, gt = disks_sample(64, 64)
    with torch.no_grad():
        a, b = ref([image])[0], cl([image])[0]
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-4)
    cl.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = cl([image], [gt])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_bad_inputs_have_clear_errors(model):
    image, gt = disks_sample(32, 32)
    model.eval()
    with pytest.raises(ValueError, match="expected Tensor"):
        model([image[0]])
    with pytest.raises(ValueError, match="float"):
        model([(image * 255).to(torch.uint8)])
    with pytest.raises(ValueError, match="channels"):
        model([torch.zeros(4, 32, 32)])
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model([image])
    bad = Instances(gt.image_size, gt.boxes, gt.labels + 5, None, gt.masks)
    with pytest.raises(ValueError, match="labels"):
        model([image], [bad])
    with pytest.raises(ValueError, match="image_size"):
        model([image[:, :20]], [gt])
    with pytest.raises(ValueError, match="masks"):
        model([image], [Instances(gt.image_size, gt.boxes, gt.labels)])


def test_group_norm_batches_of_mixed_sizes_match_single_images():
    # GroupNorm statistics cover the whole (padded) feature map: a small image batched with a large
    # one must not be normalised by the large one's padding.
    torch.manual_seed(0)
    model = build_model(tiny_model_config("model.roi_heads.score_thresh=0.0")).eval()
    small, _ = disks_sample(48, 60)
    large, _ = disks_sample(160, 200, disks=((40, 50, 12, 0), (120, 150, 20, 1)))
    with torch.no_grad():
        alone = [model([im])[0] for im in (small, large, small)]
        batched = model([small, large, small])
    for a, b in zip(alone, batched):
        assert len(a) > 0 and a.image_size == b.image_size
        torch.testing.assert_close(b.boxes, a.boxes)
        torch.testing.assert_close(b.scores, a.scores)
        torch.testing.assert_close(b.masks.crops, a.masks.crops)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_batchnorm_models_are_not_split_by_size(norm):
    torch.manual_seed(0)
    gn = build_model(tiny_model_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen_bn without weights warns that it cannot train
        bn = build_model(tiny_model_config(f"model.backbone.norm={norm}", "model.fpn.norm=", "model.mask_head.norm="))
    assert gn._padding_changes_features() and not bn._padding_changes_features()


def test_mask_predictor_bias_init_sets_the_background_floor():
    torch.manual_seed(0)
    plain = build_model(tiny_model_config())
    assert torch.equal(plain.roi_heads.mask_head.predictor.bias, torch.zeros(2))
    torch.manual_seed(0)
    low = build_model(tiny_model_config("model.mask_head.predictor_bias_init=-2.0"))
    assert torch.equal(low.roi_heads.mask_head.predictor.bias, torch.full((2,), -2.0))
    # Only the bias differs: zero features (background after the ReLU) give sigmoid(-2) ~ 0.12.
    same = [n for n, p in low.named_parameters() if n != "roi_heads.mask_head.predictor.bias"
            and torch.equal(p, plain.get_parameter(n))]
    assert len(same) == len(list(low.parameters())) - 1
    logits = low.roi_heads.mask_head.predictor(torch.zeros(1, low.roi_heads.mask_head.predictor.in_channels, 2, 2))
    assert torch.allclose(logits.sigmoid(), torch.full_like(logits, 0.1192), atol=1e-4)


def test_mask_boundary_weight_changes_only_the_mask_loss():
    torch.manual_seed(0)
    plain = build_model(tiny_model_config())
    torch.manual_seed(0)
    weighted = build_model(tiny_model_config("model.mask_head.boundary_weight=4.0"))
    assert plain.roi_heads.mask_head.boundary_weight == 0.0
    assert weighted.roi_heads.mask_head.boundary_weight == 4.0
    image, gt = disks_sample(64, 80)
    out = []
    for m in (plain, weighted):
        m.train()
        torch.manual_seed(1)  # the same proposal sampling in both
        out.append(m([image], [gt]))
    for k in LOSS_KEYS - {"loss_mask"}:
        assert torch.equal(out[0][k], out[1][k]), k
    assert not torch.equal(out[0]["loss_mask"], out[1]["loss_mask"])
