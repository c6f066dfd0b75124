import torch

from maskrcnn.formats.prediction_cache import PredictionCache, pack_instances, unpack_instances, settings_key
from maskrcnn.structures import Instances, MaskList


def soft_instances(seed=0, n=6, H=30, W=40):
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(n, H, W)
    for k in range(n - 1):
        y, x = int(torch.randint(0, H - 6, (1,), generator=g)), int(torch.randint(0, W - 6, (1,), generator=g))
        dense[k, y:y + 3 + k % 3, x:x + 2 + k % 4] = torch.rand(3 + k % 3, 2 + k % 4, generator=g)
    dense[0, :, :] = torch.where(dense[0] > 0, dense[0], torch.zeros(()))
    dense[1, 2:28, 3:39] = 0.3  # one large mask among small ones
    ml = MaskList.from_dense(dense)  # the last mask is empty
    return Instances((H, W), ml.tight_boxes(), torch.arange(n) % 2, torch.rand(n, generator=g), ml)


def test_pack_roundtrip_preserves_masks_up_to_quantisation():
    inst = soft_instances()
    back = unpack_instances(pack_instances(inst))
    assert back.image_size == inst.image_size and torch.equal(back.labels, inst.labels)
    a, b = inst.masks.to_dense(), back.masks.to_dense()
    assert torch.all((a - b).abs() <= 0.5 / 255 + 1e-7)
    assert torch.equal(a > 0, b > 0)  # nothing lost or moved
    binary = inst.replace(masks=inst.masks.threshold(0.2))
    assert torch.equal(unpack_instances(pack_instances(binary)).masks.to_dense(), binary.masks.to_dense())


def test_pack_stores_each_mask_at_its_own_size():
    d = pack_instances(soft_instances())
    padded = soft_instances().masks.crops.numel()
    assert d["flat"].numel() == int((d["sizes"][:, 0] * d["sizes"][:, 1]).sum()) < padded


def test_empty_instances_roundtrip(tmp_path):
    empty = Instances((8, 9), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                      MaskList.empty((8, 9), dtype=torch.float32))
    c = PredictionCache(str(tmp_path), {"a": 1})
    c.put("x/y", empty)  # an id that is not a safe file name
    assert len(c.get("x/y")) == 0
    c.mark_complete(["x/y"], ["cell"])
    again = PredictionCache.open(c.dir)
    assert again.is_complete(["x/y"]) and again.class_names() == ["cell"]
    assert settings_key({"a": 1, "b": [1, 2]}) == settings_key({"b": [1, 2], "a": 1}) != settings_key({"a": 2})
