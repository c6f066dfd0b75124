import torch

from maskrcnn.engine.sampler import ResumableSampler, SeededDataset


def test_shards_cover_the_dataset_and_have_equal_length():
    n, world = 11, 3
    shards = [list(ResumableSampler(n, seed=5, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert {i for s in shards for i, _ in s} == set(range(n))


def test_order_depends_on_seed_and_epoch_only():
    a = ResumableSampler(20, seed=1)
    b = ResumableSampler(20, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert [i for i, _ in a] != [i for i, _ in b]
    c = ResumableSampler(20, seed=2)
    c.set_epoch(3)
    assert [i for i, _ in a] != [i for i, _ in c]


def test_start_skips_a_prefix():
    s = ResumableSampler(10, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:] and len(s) == 6


class _Noisy:
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.rand(2)


def test_seeded_dataset_is_reproducible_and_leaves_global_rng_alone():
    ds = SeededDataset(_Noisy())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(1, 1234)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)  # whatever the global state, the sample is the same
    assert torch.equal(ds[(1, 1234)], a)
    assert not torch.equal(ds[(1, 1235)], a)
