"""Process set-up around one training run: the process group under torchrun, errors, exit codes."""
from __future__ import annotations

import logging
import sys

from maskrcnn.config import Config
from maskrcnn.engine import distributed as du
from maskrcnn.engine.hooks import NonFiniteLossError
from maskrcnn.engine.trainer import Trainer

logger = logging.getLogger("maskrcnn.engine")


def main_train(cfg: Config, resume: bool = False, progress: bool = True, overwrite: bool = False) -> int:
    """Run ``cfg`` to the end in this process (joining torchrun's group when launched by it).

    Returns a process exit code: 0 done, 3 a non-finite loss. The user's mistakes (a configuration
    error, a missing file, a run refused at start: ``RunError``) propagate as ``UserError`` for
    the front end's ``maskrcnn.cli.run`` to report (exit 2).
    """
    rank = 0
    try:
        device = du.init_distributed(device=cfg.train.device) if du.launched_by_torchrun() else None
        rank = du.get_rank()
        try:
            summary = Trainer(cfg, resume=resume, device=device, progress=progress, overwrite=overwrite).train()
        finally:
            du.cleanup()
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
