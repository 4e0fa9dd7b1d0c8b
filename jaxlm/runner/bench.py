"""Benchmark helpers: median wall time of a jitted function and its compiled memory.

Used by the scripts under ``experiments/`` that print speed tables; tests never time anything.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def compile_fn(fn: Callable, *args):
    """The compiled executable of ``jax.jit(fn)`` for ``args``."""
    return jax.jit(fn).lower(*args).compile()


def temp_bytes(compiled) -> int | None:
    """Scratch memory XLA planned for one call (the part that grows with intermediates), or
    None where the backend does not report it."""
    analysis = compiled.memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def median_seconds(compiled, *args, repeats: int = 5, min_seconds: float = 0.2) -> float:
    """Median over ``repeats`` timed calls (after one warm-up call), each synchronised with
    ``block_until_ready``; a fast call is repeated in a loop until ``min_seconds`` elapse."""
    jax.block_until_ready(compiled(*args))
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    once = max(time.perf_counter() - start, 1e-6)
    inner = max(1, int(min_seconds / once / repeats))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            out = compiled(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)
