"""One trainer per run directory: `OUT_DIR/.lock`, held with `flock` for the whole run.

Two trainers in one directory would interleave their checkpoints and logs. The kernel drops an
flock when its process dies, however it dies (kill -9 included), so a lock left by a killed
trainer is never in the way: the next one takes it over, and the holder written in the file
(pid, host, start time) only explains a refusal or a take-over. The file itself is never
deleted: deleting it would let a third trainer lock a fresh file while the second holds the old.
On a network filesystem, flock works where the filesystem supports locks (NFSv4 does).
"""

import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from transformer.errors import UserError

LOCK_NAME = ".lock"


class RunDirectoryBusy(UserError):
    """Another trainer is running in this run directory."""


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise RunDirectoryBusy(f"train.out_dir={self.path.parent} is a file, not a directory: choose another path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stream = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.seek(0)
            holder = stream.read().strip() or "a process that has not yet written its name"
            stream.close()
            raise RunDirectoryBusy(
                f"{self.path.parent} is in use by another trainer ({holder}): wait for it to end, "
                "or train into another directory with --set train.out_dir=PATH"
            ) from None
        stream.seek(0)
        earlier = stream.read().strip()
        if earlier:  # a clean release empties the file: this holder died without releasing
            print(
                f"note: taking over the lock of {self.path.parent} from {earlier}, which is no longer running",
                file=sys.stderr,
            )
        stream.seek(0)
        stream.truncate()
        stream.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        stream.flush()
        self._file = stream

    def release(self) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.flush()
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None
