"""Stopping a run cleanly: SIGTERM (what a preempted VM or a cluster scheduler sends) and
SIGINT (Ctrl-C) ask the training loop to finish its step, write a checkpoint, wait for it and
raise :class:`TrainingInterrupted`; ``jaxlm train`` then exits with ``PREEMPTED_EXIT``.

In a multi-process run (``jax.distributed.initialize``) no signal is caught here: a stop must
happen at the same step on every process, so SIGTERM is left to JAX's preemption service, which
orbax's ``CheckpointManager.reached_preemption`` reads at a step all processes agree on.
"""

from __future__ import annotations

import signal
import sys
import threading

import jax

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: a temporary failure; rerun with --resume


class TrainingInterrupted(Exception):
    """Training stopped at a signal after checkpointing ``step``; ``--resume`` continues it."""

    def __init__(self, reason: str, step: int, steps: int, run_dir):
        self.reason, self.step, self.steps, self.run_dir = reason, step, steps, run_dir
        super().__init__(f"stopped by {reason} after step {step} of {steps}; checkpoint of step "
                         f"{step} written to {run_dir}; continue with --resume")


class StopRequests:
    """While entered (in the main thread), SIGTERM and SIGINT set ``reason`` to the signal's
    name instead of killing the process; a second signal stops at once (``KeyboardInterrupt``).
    Elsewhere (another thread, or one of several processes) it catches nothing."""

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.reason is not None:
            raise KeyboardInterrupt(f"second signal ({name}): stopping without a checkpoint")
        self.reason = name
        print(f"\njaxlm: {name} received: finishing this step and writing a checkpoint "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
