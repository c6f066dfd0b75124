import pytest
import torch
from torch import nn

from maskrcnn.model.backbone import FrozenBatchNorm2d, build_resnet
from maskrcnn.model.fpn import FPN


def test_frozen_bn_matches_batchnorm_in_eval():
    bn = nn.BatchNorm2d(5).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    fbn = FrozenBatchNorm2d(5)
    fbn.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 5, 4, 3)
    torch.testing.assert_close(fbn(x), bn(x))
    assert not any(p.requires_grad for p in fbn.parameters())


@pytest.mark.parametrize("norm", ["frozen_bn", "gn", "bn"])
def test_resnet18_slim_shapes_and_fpn(norm):
    net = build_resnet("resnet18", in_channels=1, norm=norm, freeze_at=0, stem_out_channels=32, res2_out_channels=32)
    x = torch.randn(2, 1, 64, 96)
    feats = net(x)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3)]
    fpn = FPN(net.out_channels, 32, norm="gn" if norm == "gn" else "")
    ps = fpn(feats)
    assert [tuple(p.shape[-2:]) for p in ps] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert all(p.shape[1] == 32 for p in ps)
    # P6 is a stride-2 subsample of P5
    torch.testing.assert_close(ps[4], ps[3][:, :, ::2, ::2])


def test_fpn_handles_odd_sizes():
    net = build_resnet("resnet18", norm="gn", freeze_at=0, stem_out_channels=32, res2_out_channels=32)
    ps = FPN(net.out_channels, 32)(net(torch.randn(1, 3, 70, 45)))
    assert tuple(ps[0].shape[-2:]) == (18, 12)


def test_bottleneck_and_resnext_shapes():
    # Tiny widths keep this cheap while exercising bottlenecks and grouped convs.
    net = build_resnet("resnet50", norm="frozen_bn", freeze_at=0, stem_out_channels=16, res2_out_channels=32,
                       groups=4, width_per_group=4)
    assert net.res2[0].conv2.groups == 4
    feats = net(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 64, 128, 256]
    x101 = build_resnet("resnext101_32x8d", freeze_at=0)
    assert x101.res2[0].conv2.groups == 32 and x101.res2[0].conv2.out_channels == 256
    assert len(x101.res4) == 23


@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_stride_placement(stride_in_1x1):
    net = build_resnet("resnet50", stride_in_1x1=stride_in_1x1, stem_out_channels=16, res2_out_channels=32,
                       width_per_group=8)
    block = net.res3[0]
    assert tuple(block.conv1.stride) == ((2, 2) if stride_in_1x1 else (1, 1))
    assert tuple(block.conv2.stride) == ((1, 1) if stride_in_1x1 else (2, 2))


def test_freeze_at():
    net = build_resnet("resnet18", norm="bn", freeze_at=2, stem_out_channels=32, res2_out_channels=32)
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.res2.parameters())
    assert all(p.requires_grad for p in net.res3.parameters())
    net.train()
    assert not net.res2.training and net.res3.training  # frozen stages keep BN statistics fixed
    before = net.res2[0].conv1.norm.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(net.res2[0].conv1.norm.running_mean, before)
    with pytest.raises(ValueError, match="freeze_at"):
        build_resnet("resnet18", freeze_at=7)
