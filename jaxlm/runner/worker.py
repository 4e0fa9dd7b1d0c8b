"""One sweep run in its own process: ``python -m jaxlm.runner.worker RUN_DIR NAME PARENT_PID``
with the run's config as JSON on standard input (sent by the sweep).

Trains and probes into ``RUN_DIR`` and writes ``result.json``. The worker dies with its parent:
when the sweep process ends (``kill -9`` included) the worker receives SIGTERM, so it finishes
its step, checkpoints and exits rather than training on unwatched.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Arranges for ``signum`` to reach this process when its parent ``parent_pid`` dies:
    ``prctl(PR_SET_PDEATHSIG)`` on Linux, else a thread watching the parent pid each second.
    Exits at once when the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if not ok:
        def watch():
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os.kill(os.getpid(), signum)
        threading.Thread(target=watch, daemon=True, name="jaxlm-parent-watch").start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os.kill(os.getpid(), signum)


def main(argv: list[str]) -> int:
    run_dir, name, parent = argv
    die_with_parent(int(parent))
    from jaxlm.config import Config, from_dict
    from jaxlm.runner.sweep import run_one
    from jaxlm.train import PREEMPTED_EXIT, RunDirBusy, TrainingInterrupted
    config = from_dict(Config, json.loads(sys.stdin.read()))
    try:
        run_one(config, run_dir, name=name, progress=False)
    except TrainingInterrupted as e:
        print(f"jaxlm worker {name}: {e}", file=sys.stderr)
        return PREEMPTED_EXIT
    except RunDirBusy as e:
        print(f"jaxlm worker {name}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
