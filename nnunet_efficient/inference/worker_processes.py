"""nnU-Net's worker processes around a prediction: deaf to Ctrl-C while they start, ended when a run fails."""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Iterable, Iterator


def workers_deaf_to_ctrl_c(iterator: Iterator[dict]) -> Iterator[dict]:
    """nnU-Net's preprocessing iterator, its worker processes started deaf to SIGINT.

    A terminal's Ctrl-C goes to the whole process group: each of nnU-Net's workers would print
    its own KeyboardInterrupt traceback. nnU-Net spawns them while fetching the first item; a
    process started with SIGINT ignored keeps ignoring it (Python installs no KeyboardInterrupt
    handler then), so SIGINT is ignored during that fetch, and blocked too: on Linux a blocked
    signal stays pending even while ignored, and reaches this process's own handler as soon as
    the fetch returns. Ctrl-C then ends the command with one line.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield from iterator
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        first = next(iterator, None)
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C during the fetch is delivered here
    if first is None:
        return
    yield first
    yield from iterator


def terminate_processes(processes: Iterable[multiprocessing.Process]) -> None:
    """End ``processes`` (a failed run's workers, which would otherwise print tracebacks later)."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
