"""``train.py --eval-only`` with stand-ins whose scores are worked out by hand."""
import torch

import train as train_cli
from maskrcnn.engine import eval_only
from maskrcnn.structures import Instances, MaskList, Sample
from tests.inference.stub_model import IdStubModel, draw_objects

torch.set_num_threads(1)


class HalfDrawnDataset:
    """Images with two square cells in the ground truth, of which only the first is drawn into the
    image (value 1/255): ``IdStubModel`` finds exactly that one."""

    class_names = ("cell",)

    def __init__(self, n=3, size=32):
        self.items = []
        for i in range(n):
            gt = torch.zeros((2, size, size), dtype=torch.bool)
            gt[0, 2 + i:10 + i, 3:11] = True
            gt[1, 18:26, 16 + i:24 + i] = True
            masks = MaskList.from_dense(gt)
            inst = Instances((size, size), masks.tight_boxes(), torch.zeros(2, dtype=torch.long), masks=masks)
            self.items.append(Sample(draw_objects(gt[:1]), inst, f"img{i}", {}))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_eval_only_prints_kaggle_and_coco_scores_worked_out_by_hand(tmp_path, monkeypatch, capsys):
    # Each image: one of two cells found, exactly. Kaggle: at every IoU threshold TP 1, FP 0, FN 1
    # -> precision 1 / 2 -> mAP 0.5. COCO AP: precision 1 up to recall 0.5, none beyond; on the
    # 101 recall points 0, 0.01 ... 1 that is 51 / 101 (the same for masks and boxes).
    monkeypatch.setattr(eval_only, "model_from_checkpoint", lambda ck, path, device, cfg: (IdStubModel(1).eval(), cfg))
    monkeypatch.setattr(eval_only, "build_dataset", lambda data_cfg, split: HalfDrawnDataset() if split == "val" else [])
    torch.save({"model": {}}, tmp_path / "w.pth")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {device: cpu}\ntest: {score_thresh: [0.1]}\ndata: {batch_size: 2}\n")
    assert train_cli.main([str(cfg), "--eval-only", str(tmp_path / "w.pth"), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Kaggle mAP 0.5000 on 3 images"
    assert out[2].split()[:3] == ["all", "0.5000", "0.500"]
    segm = next(line for line in out if line.startswith("segm")).split()
    bbox = next(line for line in out if line.startswith("bbox")).split()
    assert float(segm[1]) == round(100 * 51 / 101, 2) and float(bbox[1]) == round(100 * 51 / 101, 2)
    assert float(segm[2]) == round(100 * 51 / 101, 2)  # AP50


def test_model_differences_name_each_key():
    from maskrcnn.config import load_config, to_dict

    cfg = load_config(None, ["model.fpn.out_channels=16"])
    saved = to_dict(load_config(None))
    assert eval_only.model_differences(saved, cfg) == ["model.fpn.out_channels: 256 (checkpoint) -> 16 (config)"]
    assert eval_only.model_differences(None, cfg) == []
