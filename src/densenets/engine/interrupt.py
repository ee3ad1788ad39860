"""Ctrl-C during training: the first finishes the step, saves and stops; the second stops at once."""

from __future__ import annotations

import signal
import threading

from .loop import TrainState


def ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves and stops them.

    A terminal's Ctrl-C goes to the whole process group; a worker killed by it would make
    the main process fail with "DataLoader worker exited unexpectedly" instead of saving.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def install_sigint(state: TrainState):
    """First Ctrl-C: finish the current step, save, exit. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if state.stop_requested:
            raise KeyboardInterrupt
        state.stop_requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", flush=True)

    return signal.signal(signal.SIGINT, handler)


def restore_sigint(previous) -> None:
    """Put back the handler :func:`install_sigint` replaced (None: it replaced none)."""
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
