"""Two CPU processes with the gloo backend: identical weights, rank-0-only files, exact resume."""
import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from maskrcnn.inference.checkpoint import load_checkpoint
from maskrcnn.engine.curves import read_metrics


def _worker(rank, world, init_file, tmp):
    from maskrcnn.engine import distributed as du
    from maskrcnn.engine.trainer import Trainer
    from tests.engine.standins import TinyDataset, TinyModel, tiny_config

    torch.set_num_threads(1)
    du.init_distributed(backend="gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, device="cpu")
    try:
        # Another run holds "busy" (the test's process): rank 0 is refused, and rank 1 must hear of
        # it and stop too instead of waiting for rank 0 forever.
        from maskrcnn.engine.run_directory import RunDirectoryError

        try:
            Trainer(tiny_config(os.path.join(tmp, "busy")), model=TinyModel(), train_dataset=TinyDataset(7),
                    val_dataset=TinyDataset(3), progress=False)
        except RunDirectoryError as e:
            assert "another training run is using train.output_dir" in str(e), str(e)
            assert rank == 0 or "rank 0 could not start the run" in str(e), str(e)
        else:
            raise AssertionError("a run on a directory held by another process was not refused")

        def run(name, resume=False, **faults):
            torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
            model = TinyModel(**faults)
            cfg = tiny_config(os.path.join(tmp, name), max_iter=5, steps=[4], accum_steps=2)
            Trainer(cfg, resume=resume, model=model, train_dataset=TinyDataset(7, augment=True),
                    val_dataset=TinyDataset(3, seed=1), progress=False).train()
            torch.save(model.state_dict(), os.path.join(tmp, f"{name}_rank{rank}.pth"))

        run("ref")
        try:
            run("crash", fail_at=2 * 3 + 1)  # during iteration 4, after the checkpoint at 2 and validation at 3
        except RuntimeError as e:
            assert "injected failure" in str(e)
        else:
            raise AssertionError("the injected failure did not happen")
        du.barrier()
        run("crash", resume=True)
    finally:
        du.cleanup()


def test_two_gloo_processes(tmp_path):
    from maskrcnn.fileio import FolderLock

    init_file = tmp_path / "pg_init"
    busy = FolderLock(tmp_path / "busy" / "run.lock")
    busy.acquire()
    ctx = mp.spawn(_worker, args=(2, str(init_file), str(tmp_path)), nprocs=2, join=False)
    deadline = time.time() + 240
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two-process run did not finish in 240 s (a collective hung?)")
    busy.release()

    assert not (tmp_path / "ref" / "run.lock").exists()  # rank 0 held it and let it go
    ref = [torch.load(tmp_path / f"ref_rank{r}.pth", weights_only=True) for r in (0, 1)]
    resumed = [torch.load(tmp_path / f"crash_rank{r}.pth", weights_only=True) for r in (0, 1)]
    for k in ref[0]:
        assert torch.equal(ref[0][k], ref[1][k]), f"ranks differ in {k}"
        assert torch.equal(ref[0][k], resumed[0][k]), f"resumed run differs in {k}"
        assert torch.equal(resumed[0][k], resumed[1][k])

    ck = load_checkpoint(str(tmp_path / "ref" / "model_final.pth"))
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # each rank keeps its own stream
    records = read_metrics(str(tmp_path / "ref" / "metrics.jsonl"))
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]  # rank 0 alone writes
    val = [r for r in records if "val/mAP" in r]
    assert [r["val/num_images"] for r in val] == [3, 3]  # sharded over ranks, gathered
    crash = [r for r in read_metrics(str(tmp_path / "crash" / "metrics.jsonl")) if "loss" in r]
    assert [(r["iteration"], r["loss"]) for r in crash] == [(r["iteration"], r["loss"]) for r in records if "loss" in r]
