"""One writer per run directory: an advisory ``fcntl`` lock on ``run_dir/run.lock``, held
while a process trains into the directory and released when it ends (the operating system
drops it when the process dies, ``kill -9`` included). The file names the holder.

``flock`` is reliable on local file systems; on network file systems (NFS) it depends on the
server.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket

LOCK = "run.lock"


class RunDirBusy(RuntimeError):
    """Another process is training into the run directory."""


class RunLock:
    """``with RunLock(run_dir):`` holds the run directory's lock, or raises
    :class:`RunDirBusy` naming the process (pid, host, start time) that holds it."""

    def __init__(self, run_dir: str | pathlib.Path):
        self.path = pathlib.Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            try:
                h = json.loads(holder)
                holder = f"pid {h['pid']} on host {h['host']}, since {h['since']}"
            except (ValueError, KeyError, TypeError):
                pass
            raise RunDirBusy(f"{self.path.parent} is in use: another process trains into it "
                             f"({holder}); wait for it to end or stop it") from None
        since = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": since}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
