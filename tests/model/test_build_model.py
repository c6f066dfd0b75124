"""build_model: config values it rejects, and the backbone contract it builds on."""
import pytest
import torch
from torch import nn

from maskrcnn.config import ConfigError
from maskrcnn.model import Backbone, build_backbone, build_model
from maskrcnn.model.backbone import check_backbone
from maskrcnn.model.fpn import FPN
from tests.model.helpers import tiny_model_config


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.anchors.sizes=[8,16,32]", "model.anchors.sizes"),
        ("model.backbone.name=resnet7", "model.backbone.name"),
        ("model.backbone.norm=ln", "model.backbone.norm"),
        ("model.mask_head.resolution=42", "model.mask_head.resolution"),
        ("model.input.pixel_mean=[0.1,0.2]", "model.input.pixel_mean"),
        ("model.input.scale=2.0", "model.input"),  # with min_size_test below: both set
    ],
)
def test_build_model_rejects_bad_values(override, key):
    extra = ["model.input.min_size_test=64"] if "scale" in override else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_model(tiny_model_config(override, *extra))


class _TwoConvBackbone(Backbone):
    """A backbone unlike ResNet that meets the contract: one strided conv per map."""

    def __init__(self, in_channels=1, widths=(8, 16, 16, 24)):
        super().__init__()
        self.out_channels = list(widths)
        convs, c = [], in_channels
        for k, w in enumerate(widths):
            convs.append(nn.Conv2d(c, w, 3, stride=4 if k == 0 else 2, padding=1))
            c = w
        self.convs = nn.ModuleList(convs)

    def forward(self, x):
        outs = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            outs.append(x)
        return outs


def test_any_backbone_meeting_the_contract_runs_in_the_model():
    model = build_model(tiny_model_config("model.roi_heads.score_thresh=0.0"))
    toy = _TwoConvBackbone()
    check_backbone(toy)
    model.backbone, model.fpn = toy, FPN(toy.out_channels, model.fpn.out_channels)
    with torch.no_grad():
        out = model.eval()([torch.rand(1, 64, 96)])[0]
    assert out.image_size == (64, 96) and out.masks is not None
    assert sorted(model.train()([torch.rand(1, 64, 96)], [out.replace(scores=None)])) == sorted(
        ["loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"])


def test_the_builder_checks_the_contract():
    cfg = tiny_model_config()
    backbone = build_backbone(cfg.backbone, cfg.input.in_channels)
    check_backbone(backbone)
    feats = backbone(torch.rand(1, cfg.input.in_channels, 64, 96))
    assert [f.shape[1] for f in feats] == backbone.out_channels
    assert [(64 // f.shape[-2], 96 // f.shape[-1]) for f in feats] == [(s, s) for s in backbone.strides]
    with pytest.raises(ValueError, match="4 maps at strides"):
        check_backbone(_TwoConvBackbone(widths=(8, 16, 16)))
    wrong = _TwoConvBackbone()
    wrong.strides = (2, 4, 8, 16)
    with pytest.raises(ValueError, match=r"strides \(2, 4, 8, 16\)"):
        check_backbone(wrong)
