"""Weight import from synthetic files with the real key naming schemes (torchvision, Caffe2, detectron2)."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from maskrcnn.model import build_model
from maskrcnn.model.weight_files import WeightsError, read_weights_file
from maskrcnn.model.weights import import_weights
from tests.model.helpers import tiny_model_config

IMAGENET = ["model.input.in_channels=3", "model.input.pixel_mean=[0.485,0.456,0.406]",
            "model.input.pixel_std=[0.229,0.224,0.225]"]
SLIM_R50 = ["model.backbone.name=resnet50", "model.backbone.stem_out_channels=16",
            "model.backbone.res2_out_channels=32", "model.backbone.width_per_group=8"]


def _bn(sd, prefix, c, g):
    sd[prefix + ".weight"] = torch.rand(c, generator=g) + 0.5
    sd[prefix + ".bias"] = torch.randn(c, generator=g)
    sd[prefix + ".running_mean"] = torch.randn(c, generator=g)
    sd[prefix + ".running_var"] = torch.rand(c, generator=g) + 0.5
    sd[prefix + ".num_batches_tracked"] = torch.tensor(7)


def torchvision_resnet18(stem=32, widths=(32, 64, 128, 256), seed=0):
    """torchvision ResNet-18 names: conv1, bn1, layerL.B.convK/bnK, layerL.0.downsample.{0,1}, fc."""
    g = torch.Generator().manual_seed(seed)
    sd = {"conv1.weight": torch.randn(stem, 3, 7, 7, generator=g)}
    _bn(sd, "bn1", stem, g)
    cin = stem
    for L, w in enumerate(widths, 1):
        for b in range(2):
            sd[f"layer{L}.{b}.conv1.weight"] = torch.randn(w, cin, 3, 3, generator=g)
            _bn(sd, f"layer{L}.{b}.bn1", w, g)
            sd[f"layer{L}.{b}.conv2.weight"] = torch.randn(w, w, 3, 3, generator=g)
            _bn(sd, f"layer{L}.{b}.bn2", w, g)
            if b == 0 and cin != w:
                sd[f"layer{L}.{b}.downsample.0.weight"] = torch.randn(w, cin, 1, 1, generator=g)
                _bn(sd, f"layer{L}.{b}.downsample.1", w, g)
            cin = w
    sd["fc.weight"] = torch.randn(10, cin, generator=g)
    sd["fc.bias"] = torch.randn(10, generator=g)
    return sd


def bottleneck_blobs(style, stem=16, out0=32, width0=8, seed=0):
    """A slim ResNet-50 in Caffe2 (``res2_0_branch2a_w``) or detectron2 (``res2.0.conv1.weight``) names."""
    rng = np.random.default_rng(seed)
    d = {}

    def conv(name_c2, name_d2, shape):
        d[name_c2 if style == "caffe2" else name_d2 + ".weight"] = rng.standard_normal(shape).astype(np.float32)

    def bn(name_c2, name_d2, c):
        if style == "caffe2":  # affine-only BN
            d[name_c2 + "_bn_s"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            d[name_c2 + "_bn_b"] = rng.standard_normal(c).astype(np.float32)
        else:
            for k, v in (("weight", rng.uniform(0.5, 1.5, c)), ("bias", rng.standard_normal(c)),
                         ("running_mean", rng.standard_normal(c)), ("running_var", rng.uniform(0.5, 2, c))):
                d[f"{name_d2}.norm.{k}"] = v.astype(np.float32)

    conv("conv1_w", "stem.conv1", (stem, 3, 7, 7))
    if style == "caffe2":
        bn("res_conv1", None, stem)
        d["conv1_w_momentum"] = np.zeros((stem, 3, 7, 7), np.float32)
    else:
        bn(None, "stem.conv1", stem)
    cin = stem
    for s, n in zip(range(2, 6), (3, 4, 6, 3)):
        w, out = width0 * 2 ** (s - 2), out0 * 2 ** (s - 2)
        for b in range(n):
            c2, d2 = f"res{s}_{b}_branch", f"res{s}.{b}"
            for br, k, shape in (("2a", 1, (w, cin, 1, 1)), ("2b", 2, (w, w, 3, 3)), ("2c", 3, (out, w, 1, 1))):
                conv(f"{c2}{br}_w", f"{d2}.conv{k}", shape)
                bn(f"{c2}{br}", f"{d2}.conv{k}", shape[0])
            if b == 0:
                conv(f"{c2}1_w", f"{d2}.shortcut", (out, cin, 1, 1))
                bn(f"{c2}1", f"{d2}.shortcut", out)
            cin = out
    if style == "caffe2":
        d["fc1000_w"] = rng.standard_normal((1000, cin)).astype(np.float32)
        d["fc1000_b"] = np.zeros(1000, np.float32)
    return d


def d2_model_final(num_classes=80, fpn=32, fc=64, mask_dim=32, seed=1):
    """detectron2 COCO Mask R-CNN names around a slim R-50 bottom-up."""
    rng = np.random.default_rng(seed)
    m = {"backbone.bottom_up." + k: v for k, v in bottleneck_blobs("detectron2", seed=seed).items()}
    a = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    for lvl, c in zip(range(2, 6), (32, 64, 128, 256)):
        m[f"backbone.fpn_lateral{lvl}.weight"], m[f"backbone.fpn_lateral{lvl}.bias"] = a(fpn, c, 1, 1), a(fpn)
        m[f"backbone.fpn_output{lvl}.weight"], m[f"backbone.fpn_output{lvl}.bias"] = a(fpn, fpn, 3, 3), a(fpn)
    m["proposal_generator.rpn_head.conv.weight"], m["proposal_generator.rpn_head.conv.bias"] = a(fpn, fpn, 3, 3), a(fpn)
    m["proposal_generator.rpn_head.objectness_logits.weight"] = a(3, fpn, 1, 1)
    m["proposal_generator.rpn_head.objectness_logits.bias"] = a(3)
    m["proposal_generator.rpn_head.anchor_deltas.weight"] = a(12, fpn, 1, 1)
    m["proposal_generator.rpn_head.anchor_deltas.bias"] = a(12)
    m["roi_heads.box_head.fc1.weight"], m["roi_heads.box_head.fc1.bias"] = a(fc, fpn * 49), a(fc)
    m["roi_heads.box_head.fc2.weight"], m["roi_heads.box_head.fc2.bias"] = a(fc, fc), a(fc)
    m["roi_heads.box_predictor.cls_score.weight"] = a(num_classes + 1, fc)
    m["roi_heads.box_predictor.cls_score.bias"] = a(num_classes + 1)
    m["roi_heads.box_predictor.bbox_pred.weight"] = a(4 * num_classes, fc)
    m["roi_heads.box_predictor.bbox_pred.bias"] = a(4 * num_classes)
    for i in range(1, 5):
        m[f"roi_heads.mask_head.mask_fcn{i}.weight"] = a(mask_dim, fpn if i == 1 else mask_dim, 3, 3)
        m[f"roi_heads.mask_head.mask_fcn{i}.bias"] = a(mask_dim)
    m["roi_heads.mask_head.deconv.weight"], m["roi_heads.mask_head.deconv.bias"] = a(mask_dim, mask_dim, 2, 2), a(mask_dim)
    m["roi_heads.mask_head.predictor.weight"] = a(num_classes, mask_dim, 1, 1)
    m["roi_heads.mask_head.predictor.bias"] = a(num_classes)
    return {"model": m, "__author__": "Detectron2 Model Zoo"}


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def test_torchvision_resnet_into_gray_frozen_bn_model(tmp_path):
    sd = torchvision_resnet18()
    path = str(tmp_path / "resnet18.pth")
    torch.save(sd, path)
    model = build_model(tiny_model_config("model.backbone.norm=frozen_bn", "model.fpn.norm=''",
                                          "model.input.pixel_std=[0.25]"), load_weights=False)
    rep = import_weights(model, path, verbose=False)
    assert rep.scheme == "torchvision" and sorted(rep.unused) == ["fc.bias", "fc.weight"]
    assert not [n for n in rep.missing if n.startswith("backbone.")] and not rep.skipped
    s = model.state_dict()
    torch.testing.assert_close(s["backbone.res3.0.shortcut.norm.running_var"], sd["layer2.0.downsample.1.running_var"])
    torch.testing.assert_close(s["backbone.res5.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    torch.testing.assert_close(s["backbone.stem.conv1.norm.bias"], sd["bn1.bias"])
    # one input channel: RGB weights scaled by 255 * 0.25 / std_src and summed over channels
    scale = 255 * 0.25 / torch.tensor([58.395, 57.12, 57.375])
    want = (sd["conv1.weight"] * scale[None, :, None, None]).sum(1, keepdim=True)
    torch.testing.assert_close(s["backbone.stem.conv1.weight"], want)


def test_torchvision_file_through_the_config(tmp_path, capsys):
    path = str(tmp_path / "r18.pth")
    torch.save(torchvision_resnet18(), path)
    cfg = tiny_model_config("model.backbone.norm=frozen_bn", "model.fpn.norm=''", f"model.backbone.weights={path}",
                            *IMAGENET)
    model = build_model(cfg)
    out = capsys.readouterr().out
    assert "loaded" in out and "unused  2" in out and "fc.weight" in out
    # RGB ImageNet std on both sides: the first conv is copied as it is
    torch.testing.assert_close(model.backbone.stem.conv1.weight.detach(), torchvision_resnet18()["conv1.weight"],
                               rtol=1e-5, atol=1e-5)


def test_caffe2_msra_pickle_bgr_and_affine_bn(tmp_path):
    blobs = bottleneck_blobs("caffe2")
    path = _pickle(tmp_path / "R-50.pkl", blobs)
    model = build_model(tiny_model_config(*SLIM_R50, *IMAGENET, "model.backbone.norm=frozen_bn",
                                          "model.fpn.norm=''"), load_weights=False)
    rep = import_weights(model, path, verbose=False)
    assert rep.scheme == "caffe2" and rep.channel_order == "bgr"
    assert sorted(rep.unused) == ["fc1000_b", "fc1000_w"]
    assert not [n for n in rep.missing if n.startswith("backbone.")]
    assert any("stride_in_1x1" in n for n in rep.notes)
    s = model.state_dict()
    torch.testing.assert_close(s["backbone.res4.5.conv3.weight"], torch.from_numpy(blobs["res4_5_branch2c_w"]))
    torch.testing.assert_close(s["backbone.res2.0.shortcut.norm.weight"], torch.from_numpy(blobs["res2_0_branch1_bn_s"]))
    assert (s["backbone.res3.1.conv2.norm.running_mean"] == 0).all()
    assert (s["backbone.res3.1.conv2.norm.running_var"] == 1).all()
    # BGR -> RGB, and std 1 (0-255 input) -> our ImageNet std on [0, 1] input
    w = torch.from_numpy(blobs["conv1_w"])
    std = torch.tensor([0.229, 0.224, 0.225])
    for ours, theirs in ((0, 2), (1, 1), (2, 0)):
        torch.testing.assert_close(s["backbone.stem.conv1.weight"][:, ours], w[:, theirs] * 255 * std[ours])


def test_detectron2_model_final_maps_all_stages_and_skips_other_class_counts(tmp_path):
    path = _pickle(tmp_path / "model_final_f10217.pkl", d2_model_final())
    cfg = tiny_model_config(*SLIM_R50, *IMAGENET, "model.backbone.norm=frozen_bn", "model.fpn.norm=''",
                            "model.mask_head.num_convs=4", "model.mask_head.conv_dim=32",
                            "model.backbone.stride_in_1x1=true")
    model = build_model(cfg, load_weights=False)
    rep = import_weights(model, path, verbose=False)
    assert rep.scheme == "detectron2"
    assert set(rep.skipped) == {
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias",
    }
    assert all("class count differs" in r for r in rep.skipped.values())
    assert sorted(rep.missing) == sorted(rep.skipped) and rep.unused == [] and rep.notes == []
    m = d2_model_final()["model"]
    s = model.state_dict()
    for ours, theirs in (("fpn.lateral.1.weight", "backbone.fpn_lateral3.weight"),
                         ("fpn.output.3.bias", "backbone.fpn_output5.bias"),
                         ("rpn.head.anchor_deltas.weight", "proposal_generator.rpn_head.anchor_deltas.weight"),
                         ("roi_heads.box_head.fc1.weight", "roi_heads.box_head.fc1.weight"),
                         ("roi_heads.mask_head.convs.3.weight", "roi_heads.mask_head.mask_fcn4.weight"),
                         ("roi_heads.mask_head.deconv.weight", "roi_heads.mask_head.deconv.weight"),
                         ("backbone.res5.2.conv1.norm.running_var", "backbone.bottom_up.res5.2.conv1.norm.running_var")):
        torch.testing.assert_close(s[ours], torch.from_numpy(m[theirs]), msg=ours)
    # same class count: the heads load too
    model80 = build_model(tiny_model_config(*SLIM_R50, *IMAGENET, "model.backbone.norm=frozen_bn", "model.fpn.norm=''",
                                            "model.mask_head.num_convs=4", "model.roi_heads.num_classes=80",
                                            "model.backbone.stride_in_1x1=true"), load_weights=False)
    rep80 = import_weights(model80, path, verbose=False)
    assert rep80.missing == [] and rep80.skipped == {}
    torch.testing.assert_close(model80.state_dict()["roi_heads.box_predictor.cls_score.bias"],
                               torch.from_numpy(m["roi_heads.box_predictor.cls_score.bias"]))


def test_batchnorm_file_into_groupnorm_model_skips_norms(tmp_path):
    path = str(tmp_path / "r18.pth")
    torch.save(torchvision_resnet18(), path)
    model = build_model(tiny_model_config(*IMAGENET), load_weights=False)  # GN backbone
    before = model.backbone.res2[0].conv1.norm.weight.detach().clone()
    rep = import_weights(model, path, verbose=False)
    assert "backbone.res2.0.conv1.norm.weight" in rep.skipped
    assert all("GroupNorm" in r for r in rep.skipped.values())
    torch.testing.assert_close(model.backbone.res2[0].conv1.norm.weight.detach(), before)
    assert "backbone.res2.0.conv1.weight" in rep.loaded


def test_bad_files(tmp_path):
    model = build_model(tiny_model_config(), load_weights=False)
    with pytest.raises(WeightsError, match="not found"):
        import_weights(model, str(tmp_path / "nope.pth"))
    path = str(tmp_path / "odd.pth")
    torch.save({"encoder.w": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="unrecognised"):
        import_weights(model, path)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="bad.pkl"):
        import_weights(model, str(bad))


def test_own_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    a = build_model(tiny_model_config())
    path = str(tmp_path / "ck.pth")
    torch.save({"model": a.state_dict(), "iteration": 3}, path)
    torch.manual_seed(1)
    b = build_model(tiny_model_config())
    rep = import_weights(b, path, verbose=False)
    assert rep.scheme == "ours" and rep.missing == [] and rep.unused == []
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v)


def test_torchvision_detection_heads_move_background_last(tmp_path):
    """torchvision's maskrcnn_resnet50_fpn names (recent versions), with background as class 0."""
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    K1, fc, fpn = 3, 64, 32  # 2 classes + background
    sd = {f"backbone.body.{k}": v for k, v in torchvision_resnet18().items()}
    for i, c in enumerate((32, 64, 128, 256)):
        sd[f"backbone.fpn.inner_blocks.{i}.0.weight"], sd[f"backbone.fpn.inner_blocks.{i}.0.bias"] = r(fpn, c, 1, 1), r(fpn)
        sd[f"backbone.fpn.layer_blocks.{i}.0.weight"], sd[f"backbone.fpn.layer_blocks.{i}.0.bias"] = r(fpn, fpn, 3, 3), r(fpn)
    sd["rpn.head.conv.0.0.weight"], sd["rpn.head.conv.0.0.bias"] = r(fpn, fpn, 3, 3), r(fpn)
    sd["rpn.head.cls_logits.weight"], sd["rpn.head.cls_logits.bias"] = r(3, fpn, 1, 1), r(3)
    sd["rpn.head.bbox_pred.weight"], sd["rpn.head.bbox_pred.bias"] = r(12, fpn, 1, 1), r(12)
    sd["roi_heads.box_head.fc6.weight"], sd["roi_heads.box_head.fc6.bias"] = r(fc, fpn * 49), r(fc)
    sd["roi_heads.box_head.fc7.weight"], sd["roi_heads.box_head.fc7.bias"] = r(fc, fc), r(fc)
    sd["roi_heads.box_predictor.cls_score.weight"], sd["roi_heads.box_predictor.cls_score.bias"] = r(K1, fc), r(K1)
    sd["roi_heads.box_predictor.bbox_pred.weight"], sd["roi_heads.box_predictor.bbox_pred.bias"] = r(4 * K1, fc), r(4 * K1)
    sd["roi_heads.mask_head.0.0.weight"], sd["roi_heads.mask_head.0.0.bias"] = r(32, fpn, 3, 3), r(32)
    sd["roi_heads.mask_predictor.conv5_mask.weight"], sd["roi_heads.mask_predictor.conv5_mask.bias"] = r(32, 32, 2, 2), r(32)
    sd["roi_heads.mask_predictor.mask_fcn_logits.weight"] = r(K1, 32, 1, 1)
    sd["roi_heads.mask_predictor.mask_fcn_logits.bias"] = r(K1)
    path = str(tmp_path / "tv_maskrcnn.pth")
    torch.save(sd, path)
    model = build_model(tiny_model_config(*IMAGENET, "model.backbone.norm=frozen_bn", "model.fpn.norm=''"),
                        load_weights=False)
    rep = import_weights(model, path, verbose=False)
    assert rep.scheme == "torchvision_detection" and rep.missing == [] and rep.skipped == {}
    s = model.state_dict()
    w = sd["roi_heads.box_predictor.cls_score.weight"]
    torch.testing.assert_close(s["roi_heads.box_predictor.cls_score.weight"], torch.cat([w[1:], w[:1]]))
    torch.testing.assert_close(s["roi_heads.box_predictor.bbox_pred.bias"], sd["roi_heads.box_predictor.bbox_pred.bias"][4:])
    torch.testing.assert_close(s["roi_heads.mask_head.predictor.bias"], sd["roi_heads.mask_predictor.mask_fcn_logits.bias"][1:])
    torch.testing.assert_close(s["rpn.head.conv.weight"], sd["rpn.head.conv.0.0.weight"])
    torch.testing.assert_close(s["fpn.output.2.bias"], sd["backbone.fpn.layer_blocks.2.0.bias"])
    torch.testing.assert_close(s["roi_heads.mask_head.convs.0.weight"], sd["roi_heads.mask_head.0.0.weight"])


# ------------------------------------------------------------------ safe unpickling
class _Payload:
    """A pickle whose loading would create ``marker`` (a harmless stand-in for ``os.system``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("where", ["top", "inside_model", "as_the_file"])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, protocol, where):
    marker = tmp_path / "payload_ran"
    blobs = bottleneck_blobs("detectron2")
    obj = {
        "top": {"model": blobs, "__author__": "Detectron2 Model Zoo", "cfg": _Payload(marker)},
        "inside_model": {"model": {**blobs, "res2.0.conv1.weight": _Payload(marker)}},
        "as_the_file": _Payload(marker),
    }[where]
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    cfg = tiny_model_config(*SLIM_R50, *IMAGENET, "model.backbone.norm=frozen_bn", "model.fpn.norm=''",
                            f"model.backbone.weights={path}")
    with pytest.raises(WeightsError) as e:
        build_model(cfg)  # the way a config's model.backbone.weights reaches the file
    assert not marker.exists()
    msg = str(e.value)
    assert f"{os.mkdir.__module__}.mkdir" in msg and str(path) in msg and "nothing in the file was run" in msg


def test_a_pickled_torch_tensor_or_class_is_refused(tmp_path):
    path = tmp_path / "tensors.pkl"
    path.write_bytes(pickle.dumps({"conv1.weight": torch.zeros(2)}))
    with pytest.raises(WeightsError, match=r"torch\..*rebuild"):
        read_weights_file(str(path))
    path.write_bytes(pickle.dumps({"w": np.zeros(2), "big": bytes(8)}, protocol=2))  # bytes(8) is fine as data
    assert read_weights_file(str(path))[0]["w"].shape == (2,)
    # bytes(n) called by the pickle itself would allocate n bytes: only bytes() is accepted
    path.write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.")
    with pytest.raises(WeightsError, match="bytes"):
        read_weights_file(str(path))


def _numpy1_names(data: bytes) -> bytes:
    """A protocol < 4 pickle as numpy 1.x writes it (``numpy.core``; 2.x writes ``numpy._core``)."""
    return data.replace(b"numpy._core.", b"numpy.core.")


# numpy 1.x names are checked with protocols 0 and 2, where globals are newline-ended text.
@pytest.mark.parametrize("protocol, numpy1", [(0, False), (2, False), (4, False), (5, False), (0, True), (2, True)])
def test_real_shaped_detectron2_pickles_load_with_every_protocol(tmp_path, protocol, numpy1):
    d2 = d2_model_final()
    d2["matching_heuristics"] = True  # as detectron2's converted files carry
    d2["model"]["pixel_mean"] = np.float64(103.53)  # a numpy scalar among the arrays
    data = pickle.dumps(d2, protocol=protocol)
    if numpy1:
        data = _numpy1_names(data)
        assert b"numpy.core.multiarray" in data
    path = tmp_path / "model_final.pkl"
    path.write_bytes(data)
    tensors, extras = read_weights_file(str(path))
    assert extras == {"__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    assert set(tensors) == set(d2_model_final()["model"])
    for k, v in d2_model_final()["model"].items():
        assert tensors[k].dtype == torch.float32 and torch.equal(tensors[k], torch.from_numpy(v)), k
    model = build_model(tiny_model_config(*SLIM_R50, *IMAGENET, "model.backbone.norm=frozen_bn", "model.fpn.norm=''",
                                          "model.mask_head.num_convs=4", "model.backbone.stride_in_1x1=true"),
                        load_weights=False)
    rep = import_weights(model, str(path), verbose=False)
    assert rep.scheme == "detectron2" and "fpn.lateral.0.weight" in rep.loaded


def _py2_pickle(obj) -> bytes:
    """Python 2.7 cPickle protocol-2 bytes (as Detectron's Caffe2 ``.pkl`` files) of dicts, str and arrays:
    str as SHORT_BINSTRING/BINSTRING, arrays through ``numpy.core.multiarray._reconstruct`` with their
    data as a byte string, which Python 3 reads back as latin1 text."""
    if isinstance(obj, str):
        b = obj.encode("latin1")
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2_pickle(k) + _py2_pickle(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray):
        code = obj.dtype.str[1:]  # e.g. 'f4'
        dtype = (b"cnumpy\ndtype\n" + _py2_pickle(code) + b"K\x00K\x01\x87R"
                 + b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
        shape = b"(" + b"".join(_py2_pickle(int(s)) for s in obj.shape) + b"t"
        data = np.ascontiguousarray(obj, dtype="<" + code).tobytes().decode("latin1")
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
                + b"(K\x01" + shape + dtype + b"\x89" + _py2_pickle(data) + b"tb")
    raise TypeError(type(obj))


def test_python2_caffe2_pickle_loads(tmp_path):
    blobs = bottleneck_blobs("caffe2")
    path = tmp_path / "R-50.pkl"
    path.write_bytes(b"\x80\x02" + _py2_pickle({"blobs": blobs, "__author__": "MSRA"}) + b".")
    assert pickle.loads(path.read_bytes(), encoding="latin1")["blobs"].keys() == blobs.keys()  # a valid pickle
    model = build_model(tiny_model_config(*SLIM_R50, *IMAGENET, "model.backbone.norm=frozen_bn",
                                          "model.fpn.norm=''", "model.backbone.stride_in_1x1=true"), load_weights=False)
    rep = import_weights(model, str(path), verbose=False)
    assert rep.scheme == "caffe2" and not [n for n in rep.missing if n.startswith("backbone.")]
    torch.testing.assert_close(model.state_dict()["backbone.res4.5.conv3.weight"],
                               torch.from_numpy(blobs["res4_5_branch2c_w"]))
