"""``python -m maskrcnn COMMAND [options]``: the commands that have no script of their own at the
root (``train.py``, ``predict.py`` and ``evaluate.py`` have theirs). Each is ``maskrcnn.cli.COMMAND``,
imported only when it is run, so ``--help`` of one does not load the others.
"""
import importlib
import sys

from maskrcnn import cli

COMMANDS = {
    "export": "a trained model as one deployable .pt2 file (torch.export)",
    "make_cache": "a dataset as one compact .npz cache",
    "pseudo_label": "pseudo-label unlabelled images; split training folds into labelled and unlabelled ids",
    "scale": "slide | collection: large images and image collections on a Dask cluster",
    "synthetic": "a synthetic cell dataset in a real layout",
    "viz": "ground-truth and predicted outlines drawn on images",
    "zoo": "export | list: the model zoo's entries",
}


def _usage() -> str:
    lines = ["usage: python -m maskrcnn COMMAND ...", ""]
    lines += [f"  {name:<14}{what}" for name, what in COMMANDS.items()]
    lines += ["", "python -m maskrcnn COMMAND --help shows its options; train.py, predict.py and evaluate.py "
              "are the other commands."]
    return "\n".join(lines)


def main(argv=None) -> int:
    """The exit code of ``python -m maskrcnn argv``: the command's own (``maskrcnn.cli`` conventions)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else cli.EXIT_USER_ERROR
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)} "
              "(see python -m maskrcnn --help)", file=sys.stderr)
        return cli.EXIT_USER_ERROR
    return importlib.import_module(f"maskrcnn.cli.{argv[0]}").main(argv[1:])  # --debug goes on to it


if __name__ == "__main__":
    sys.exit(main())
