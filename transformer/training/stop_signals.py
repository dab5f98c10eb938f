"""SIGINT and SIGTERM end a training run the same way: at a safe point, with a checkpoint.

Cluster schedulers send SIGTERM some time before they kill a job, so it must save like Ctrl-C.
The first signal raises KeyboardInterrupt, unless a checkpoint is being written: then it is
held until the write ends, since an exception inside it would throw the half-written folder
away and, on the first save of a run, leave none at all. Every later signal only prints that
the run is already stopping: a user pressing Ctrl-C twice must not interrupt the save the
first press asked for, nor get a traceback.
"""

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self) -> None:
        self.received: str | None = None
        self._saving = 0
        self._raised = False
        self._previous: dict[int, Any] = {}

    @contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        """Handle SIGINT and SIGTERM while the block runs (signals reach only the main thread:
        elsewhere this does nothing and Python's default Ctrl-C stays)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {number: signal.signal(number, self._handle) for number in HANDLED}
        try:
            yield self
        finally:
            for number, handler in self._previous.items():
                signal.signal(number, handler)

    @contextmanager
    def saving(self) -> Iterator[None]:
        """A checkpoint write: a signal that arrives now is acted on when it is done."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
        if self.received is not None and not self._saving and not self._raised:
            self._raised = True
            raise KeyboardInterrupt

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.received is not None:
            print(f"\n{name} received: already stopping, wait for the checkpoint to be written", file=sys.stderr)
            return
        self.received = name
        if self._saving:
            print(f"\n{name} received: stopping once this checkpoint is written", file=sys.stderr)
            return
        self._raised = True
        raise KeyboardInterrupt
