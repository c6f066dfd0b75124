"""``train.py`` with one injected fault, for the elastic-restart test (run by torchrun, not by pytest).

``FAULT_RANK`` (default 1) kills itself with SIGKILL right after the checkpoint of iteration
``FAULT_AFTER`` is saved, in the first attempt only (torchrun's ``TORCHELASTIC_RESTART_COUNT`` is 0):
the process is gone as a lost machine would be, no exception, no cleanup.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import train  # noqa: E402
from maskrcnn.engine import hooks  # noqa: E402

_save = hooks.CheckpointHook.save


def _save_then_die(self, name):
    _save(self, name)
    if (self.loop.iteration == int(os.environ["FAULT_AFTER"]) and self.trainer.rank == int(os.environ.get("FAULT_RANK", "1"))
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
        os.kill(os.getpid(), signal.SIGKILL)


hooks.CheckpointHook.save = _save_then_die

if __name__ == "__main__":
    sys.exit(train.main())
