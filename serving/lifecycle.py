"""The worker's life: it ends with the process that started it."""

import os
import sys


def die_with_parent() -> None:
    """Have Linux SIGTERM this worker when the process that started it dies. BentoML runs its workers
    in sessions of their own, so killing ``bentoml serve`` (its whole process group, SIGKILL) would
    otherwise leave the worker behind, holding the port and the Triton channel."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() == 1:  # the parent was already gone before the call
        os.kill(os.getpid(), signal.SIGTERM)
