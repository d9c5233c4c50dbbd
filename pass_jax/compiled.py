"""Programs compiled ahead of time, apart from running them, and kept for the process.

``auto`` compiles each prefill and segment program before running it, so that the seconds
compiling takes stay out of a generation's wall time (``executable``). ``iteration_cost``
compiles every candidate layout it is about to time at once, the programs traced one by one
and compiled concurrently (``compile_all``; JAX's maintainers suggest threads for
``compile()``, which releases the GIL, and not for tracing, which holds it), then times them
one by one on an otherwise idle device.

An executable is kept by its jitted function, static arguments, and the shapes, dtypes (weak
types too) and shardings of the other arguments, with the matmul precision and x64 settings
in force; ``forget`` drops them all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import jax

_EXECUTABLES: dict = {}


def _key(fn, statics: tuple, static_kw: dict, args: tuple) -> tuple:
    leaves, tree = jax.tree.flatten(args)
    avals = tuple((jax.typeof(x), getattr(x, "sharding", None)) for x in leaves)  # weak types too
    settings = (jax.config.jax_default_matmul_precision, jax.config.jax_enable_x64)
    return (fn, statics, tuple(sorted(static_kw.items())), tree, avals, settings)


def executable(fn, statics: tuple, static_kw: dict, *args) -> tuple[Callable, float]:
    """The jitted ``fn`` compiled for its static arguments (``statics`` first, ``static_kw``
    by name) and the shapes of ``args``, called with ``args`` alone; and the seconds compiling
    took now (0.0 when it was compiled before)."""
    key = _key(fn, statics, static_kw, args)
    if key in _EXECUTABLES:
        return _EXECUTABLES[key], 0.0
    t = time.perf_counter()
    _EXECUTABLES[key] = fn.lower(*statics, *args, **static_kw).compile()
    return _EXECUTABLES[key], time.perf_counter() - t


def usable_cores() -> int:
    """The CPU cores this process may use (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS
        return os.cpu_count() or 1


def compile_all(
    jobs: Sequence[tuple[Callable, tuple, dict, tuple]],
    threads: int | None = None,
    done: Callable[[], None] | None = None,
) -> float:
    """Compile every job ``(fn, statics, static_kw, args)`` not compiled yet (as
    ``executable`` would, which then finds it): traced and lowered one by one, compiled in
    ``threads`` threads (default: one per CPU core this process may use, at most one per
    job). ``done`` is called after each job. Returns the seconds it took."""
    t = time.perf_counter()
    lowered = {}
    for fn, statics, static_kw, args in jobs:
        key = _key(fn, statics, static_kw, args)
        if key not in _EXECUTABLES and key not in lowered:
            lowered[key] = fn.lower(*statics, *args, **static_kw)
        elif done is not None:
            done()
    workers = max(1, min(len(lowered), threads or usable_cores()))
    pool = ThreadPoolExecutor(workers)
    try:
        futures = {pool.submit(low.compile): key for key, low in lowered.items()}
        for future in as_completed(futures):
            _EXECUTABLES[futures[future]] = future.result()
            if done is not None:
                done()
    finally:  # on an error, what has not started compiling is dropped, not waited for
        pool.shutdown(cancel_futures=True)
    return time.perf_counter() - t


def forget() -> None:
    """Drop every program compiled here."""
    _EXECUTABLES.clear()
