"""A tiny stand-in model and dataset for engine tests (the real ones are tested by their owners).

The model has the trainer-facing contract of ``maskrcnn.model.build_model``: in training mode
``model(images, targets) -> dict of losses``, in eval mode ``model(images) -> list[Instances]``
with soft masks. It also draws from the global torch RNG in training (like RPN/RoI sampling),
so that the exact-resume tests check the RNG state is restored.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from maskrcnn.config import Config, load_config
from maskrcnn.structures import Instances, MaskList, Sample


class TinyDataset(Dataset):
    """``n`` grayscale ``size x size`` images with 1-3 square cells each; random flips when ``augment``."""

    def __init__(self, n: int = 5, size: int = 24, augment: bool = False, seed: int = 0):
        self.n, self.size, self.augment = n, size, augment
        g = torch.Generator().manual_seed(seed)
        self.masks = []
        for _ in range(n):
            k = int(torch.randint(1, 4, (1,), generator=g))
            dense = torch.zeros((k, size, size), dtype=torch.bool)
            for j in range(k):
                y, x = torch.randint(0, size - 8, (2,), generator=g).tolist()
                s = int(torch.randint(4, 8, (1,), generator=g))
                dense[j, y : y + s, x : x + s] = True
            self.masks.append(dense)

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        # The loader's contract (maskrcnn.data.build_loader): keys are (epoch, index), and the
        # augmentation of a sample is drawn from (seed, epoch, index) alone.
        epoch, i = key if isinstance(key, tuple) else (0, key)
        g = torch.Generator().manual_seed(1000 * epoch + i)
        dense = self.masks[i]
        if self.augment and bool(torch.rand((), generator=g) < 0.5):
            dense = dense.flip(-1)
        image = (dense.any(0).float() * 0.8 + 0.1)[None]
        image = image + 0.05 * torch.randn(image.shape, generator=g) if self.augment else image
        masks = MaskList.from_dense(dense)
        inst = Instances((self.size, self.size), masks.tight_boxes(), torch.zeros(len(dense), dtype=torch.long), masks=masks)
        return Sample(image.clamp(0, 1), inst, f"img{i}", {"cell_type": "tiny"})


class TinyModel(nn.Module):
    """Per-pixel foreground logits; optional faults: an exception (``fail_with``, RuntimeError by
    default) or a NaN loss at forward call k, or a NaN loss once the weights have moved more than
    ``diverge_above`` from where they started (a stand-in for a learning rate too high: the
    distance travelled grows with the rate)."""

    def __init__(self, fail_at: int = 0, nan_at: int = 0, diverge_above: float = 0.0, fail_with: type = RuntimeError):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 1, 1)
        self.fail_at, self.nan_at, self.calls = fail_at, nan_at, 0
        self.fail_with = fail_with
        self.diverge_above = diverge_above
        self.start = [p.detach().clone() for p in self.parameters()]  # not in the state dict

    def forward(self, images, targets=None):
        x = torch.stack(images)
        logits = self.conv2(torch.relu(self.norm(self.conv1(x))))[:, 0]
        if not self.training:
            out = []
            for lg in logits:
                h, w = lg.shape
                crops = torch.sigmoid(lg.float())[None]
                masks = MaskList(crops, torch.zeros((1, 2), dtype=torch.long), (h, w))
                boxes = torch.tensor([[0.0, 0.0, w, h]])
                out.append(Instances((h, w), boxes, torch.zeros(1, dtype=torch.long), torch.ones(1) * 0.9, masks))
            return out
        self.calls += 1
        if self.fail_at and self.calls == self.fail_at:
            raise self.fail_with(f"injected failure at forward call {self.calls}")
        target = torch.stack([t.masks.to_dense().any(0).float() for t in targets])
        flat_l, flat_t = logits.flatten().float(), target.flatten()
        pick = torch.randperm(flat_l.numel(), device=flat_l.device)[: flat_l.numel() // 2]  # like RoI sampling
        losses = {
            "loss_mask": nn.functional.binary_cross_entropy_with_logits(flat_l, flat_t),
            "loss_cls": nn.functional.binary_cross_entropy_with_logits(flat_l[pick], flat_t[pick]),
        }
        if self.nan_at and self.calls >= self.nan_at:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        if self.diverge_above and self.distance() > self.diverge_above:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    def distance(self) -> float:
        """Largest change of any weight since construction."""
        return max(float((p.detach() - s).abs().max()) for p, s in zip(self.parameters(), self.start))


def tiny_config(output_dir: str, *overrides: str, **solver) -> Config:
    """A config for the stand-ins: a few iterations, frequent checkpoints and validation; more
    ``key=value`` overrides and ``solver.<key>=value`` as keywords."""
    extra = list(overrides)
    overrides = [
        f"train.output_dir={output_dir}",
        "train.device=cpu",
        "train.checkpoint_period=2",
        "train.eval_period=3",
        "train.log_period=1",
        "train.keep_checkpoints=0",
        "data.batch_size=2",
        "data.num_workers=0",
        "solver.max_iter=6",
        "solver.lr=0.1",
        "solver.warmup_iters=2",
        "solver.steps=[4]",
        "test.score_thresh=[0.5]",
    ]
    overrides += [f"solver.{k}={v}" for k, v in solver.items()] + extra
    return load_config(None, overrides)


def assert_same_weights_and_optimizer(a: dict, b: dict) -> None:
    """Two checkpoints hold bitwise the same weights and optimiser state (exact-resume tests)."""
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
