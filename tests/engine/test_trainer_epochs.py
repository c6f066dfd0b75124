"""The Trainer moves through epochs: a new order and new augmentation keys each epoch, and a run
resumed mid-epoch asks for exactly the samples the uninterrupted run asked for from that point.

The exact-resume tests compare model weights of two runs; a trainer that never advanced the epoch
(every epoch the first one again) would pass them. Here the dataset records the ``(epoch, index)``
keys it is asked for, and they are checked against the schedule worked out by hand: 5 images in
batches of 2 give 3 batches per epoch (the last one short), so iterations 1-3 are epoch 0, 4-6
epoch 1, 7-9 epoch 2.
"""
import pytest
import torch

from maskrcnn.engine.trainer import Trainer
from tests.engine.standins import TinyDataset, TinyModel, tiny_config

torch.set_num_threads(1)


class _Recording(TinyDataset):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = []

    def __getitem__(self, key):
        self.log.append(tuple(key) if isinstance(key, tuple) else (0, key))
        return super().__getitem__(key)


def _run(out, model, resume=False):
    data = _Recording(5, augment=True)
    cfg = tiny_config(out, "train.eval_period=0", max_iter=9, steps="[8]")
    Trainer(cfg, resume=resume, model=model, train_dataset=data, progress=False).train()
    return data.log


def _run_crashing(out, model):
    data = _Recording(5, augment=True)
    cfg = tiny_config(out, "train.eval_period=0", max_iter=9, steps="[8]")
    with pytest.raises(RuntimeError, match="injected failure"):
        Trainer(cfg, model=model, train_dataset=data, progress=False).train()
    return data.log


def test_each_epoch_has_its_own_order_and_keys_and_a_resume_continues_them(tmp_path):
    ref = _run(str(tmp_path / "ref"), TinyModel())
    assert [e for e, _ in ref] == [0] * 5 + [1] * 5 + [2] * 5
    orders = [[i for e, i in ref if e == k] for k in range(3)]
    assert all(sorted(o) == list(range(5)) for o in orders)
    assert len({tuple(o) for o in orders}) == 3  # (train.seed 42: three different permutations)

    # Crash in iteration 5 (the second batch of epoch 1), after the checkpoint at 4; resume.
    crashed = _run_crashing(str(tmp_path / "run"), TinyModel(fail_at=5))
    assert crashed[:8] == ref[:8]
    resumed = _run(str(tmp_path / "run"), TinyModel(), resume=True)
    assert resumed == ref[7:]  # epoch 1 from position 2 on, then all of epoch 2
