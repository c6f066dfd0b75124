"""Train Mask R-CNN, or evaluate a checkpoint.

    python train.py CONFIG.yaml [--resume | --overwrite] [--set key=value ...]
    python train.py CONFIG.yaml --eval-only WEIGHTS.pth [--eval-out metrics.json] [--set key=value ...]

Multi-GPU / multi-node: ``torchrun --nproc_per_node=N train.py CONFIG.yaml`` (``torchrun`` sets
RANK/WORLD_SIZE/LOCAL_RANK; each process drives one GPU; only rank 0 writes files).

``--eval-only`` validates WEIGHTS on the config's validation split as training does (same split,
post-processing, device and precision) and prints the Kaggle mAP per class and IoU threshold and
COCO mask/box AP; it takes no run directory and writes nothing but ``--eval-out``.

The command line of ``train.py`` (a checkout) and ``maskrcnn-train`` (an installed package).
"""
import os
import sys

# Sleep, not spin, when an OpenMP thread waits: on a shared CPU machine spinning threads fight
# other processes and a 2-thread run can be several times slower than a 1-thread one. Must be
# set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from maskrcnn import cli
from maskrcnn.config import Config, load_config, reject_repeated_keys
from maskrcnn.engine import distributed as du
from maskrcnn.engine.hooks import NonFiniteLossError
from maskrcnn.engine.trainer import Trainer
from maskrcnn.progress import progress_mode


def _train(argv) -> int:
    parser = cli.ArgumentParser(prog=cli.program("train.py"), description=__doc__)
    parser.add_argument("config", help="YAML config file (see configs/)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from <output_dir>/last_checkpoint")
    start.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in an output_dir that holds an earlier run's checkpoints (removes them)",
    )
    start.add_argument("--eval-only", metavar="WEIGHTS", default=None,
                       help="evaluate this checkpoint (a file or a model zoo name, e.g. nuclei) on the config's "
                       "validation split instead of training")
    parser.add_argument("--eval-out", metavar="FILE.json", default=None, help="--eval-only: also write the metrics here")
    cli.add_set_option(parser, "config overrides, e.g. solver.lr=1e-4 data.batch_size=4")
    parser.add_argument("--no-progress", action="store_true",
                        help="log lines instead of a progress bar (the default off a terminal)")
    parser.add_argument("--compile", choices=("none", "regional"), default=None,
                        help="torch.compile the backbone, FPN and heads (sets model.compile; default: the config's)")
    args = parser.parse_args(argv)
    if args.eval_out and not args.eval_only:
        parser.error("--eval-out needs --eval-only")
    reject_repeated_keys(args.set)
    cfg = load_config(args.config, args.set + ([f"model.compile={args.compile}"] if args.compile else []))
    bar = progress_mode(args.no_progress) == "bar"  # off a terminal: loss lines with an ETA instead
    if args.eval_only:
        from maskrcnn.engine.eval_only import main_eval_only

        return main_eval_only(cfg, args.eval_only, progress=bar, out=args.eval_out)
    return main_train(cfg, resume=args.resume, progress=bar, overwrite=args.overwrite)


def main(argv=None) -> int:
    """The exit code of ``train.py argv`` (user errors: one ``error:`` line and 2, see ``maskrcnn.cli``)."""
    return cli.run(_train, argv)


def main_train(cfg: Config, resume: bool = False, progress: bool = True, overwrite: bool = False) -> int:
    """Run ``cfg`` to the end in this process (joining torchrun's group when launched by it).

    Returns a process exit code: 0 done, 3 a non-finite loss. The user's mistakes (a configuration
    error, a missing file, a run refused at start: ``RunError``) propagate as ``UserError`` for
    ``cli.run`` to report (exit 2).
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

