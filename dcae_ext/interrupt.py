"""SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption): stop cleanly, say so in one line, exit
128 + the signal number (130, 143) as shells and schedulers expect.

Two ways to stop, used by the commands:
- `raising_signals()`: SIGTERM raises `Interrupted` where the program is, as SIGINT raises
  KeyboardInterrupt (for work whose results are already safe on disk, e.g. finished shards);
- `deferred_signals()`: the first SIGINT or SIGTERM only sets `.received`, so a loop finishes its
  step and saves before it stops (the trainer); a second one raises `Interrupted` at once.
DataLoader workers ignore both (`ignore_in_worker`): the main process stops them, so a Ctrl-C in a
terminal, which signals the whole process group, prints nothing from them.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The command was stopped by a signal; `exit_status` is 128 + its number. A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way turns it into another error."""

    def __init__(self, signum: int, message: str | None = None):
        self.signum = signum
        super().__init__(message or f"interrupted ({signal.Signals(signum).name})")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def ignore_in_worker(_worker_id: int | None = None) -> None:
    """A DataLoader `worker_init_fn`: this worker ignores SIGINT and SIGTERM, and a connection the
    stopping main process drops does not print a traceback from the worker's threads (the thread
    of multiprocessing's resource_sharer that hands a batch's file descriptors over, for one)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    threading.excepthook = _quiet_when_disconnected
    sys.excepthook = _quiet_when_disconnected_sys  # resource_sharer's thread reports through sys.excepthook


DISCONNECTED = (ConnectionError, EOFError)


def _quiet_when_disconnected(args) -> None:
    if issubclass(args.exc_type, DISCONNECTED):
        return
    threading.__excepthook__(args)


def _quiet_when_disconnected_sys(exc_type, exc_value, exc_traceback) -> None:
    if issubclass(exc_type, DISCONNECTED):
        return
    sys.__excepthook__(exc_type, exc_value, exc_traceback)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handlers(handler):
    if not _in_main_thread():  # signal handlers can only be set there; elsewhere keep Python's defaults
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _raise(signum, _frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def raising_signals():
    """Within: SIGINT and SIGTERM raise Interrupted where the main thread is."""
    with _handlers(_raise):
        yield


class deferred_signals:
    """Within: the first SIGINT or SIGTERM sets `received` (its number); a second raises Interrupted."""

    def __init__(self):
        self.received: int | None = None
        self._context = None

    def _handle(self, signum, _frame):
        if self.received is not None:
            raise Interrupted(signum, f"interrupted again ({signal.Signals(signum).name}) while stopping: "
                                      "stopped without saving")
        self.received = signum

    def __enter__(self):
        self._context = _handlers(self._handle)
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)
