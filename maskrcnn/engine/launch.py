"""Process set-up around one training run: the process group under torchrun, errors, exit codes."""
from __future__ import annotations

import logging
import sys

from maskrcnn.config import Config, ConfigError
from maskrcnn.engine import distributed as du
from maskrcnn.engine.checkpoint import RunError
from maskrcnn.engine.trainer import NonFiniteLossError, Trainer

logger = logging.getLogger("maskrcnn.engine")


def main_train(cfg: Config, resume: bool = False, progress: bool = True, overwrite: bool = False) -> int:
    """Run ``cfg`` to the end in this process (joining torchrun's group when launched by it).

    Returns a process exit code: 0 done, 2 a configuration error, a missing file or a run refused
    at start (``RunError``: the output folder is in use or holds an earlier run, a resume that
    cannot be honoured), 3 a non-finite loss.
    """
    rank = 0
    try:
        device = du.init_distributed(device=cfg.train.device) if du.launched_by_torchrun() else None
        rank = du.get_rank()
        try:
            summary = Trainer(cfg, resume=resume, device=device, progress=progress, overwrite=overwrite).train()
        finally:
            du.cleanup()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # a data folder, annotation file or checkpoint named by the config
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunError as e:  # refused before anything changed: the folder is in use, a resume it cannot honour
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 3
    if rank == 0:
        best = summary["best_score"]
        print(
            f"done: {summary['iteration']} iterations in {cfg.train.output_dir}; "
            + (f"best validation mAP {best:.4f} at iteration {summary['best_iteration']}" if best is not None else "no validation")
        )
    return 0
