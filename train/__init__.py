"""Training programs (``python -m train.base``, ``python -m train.lookahead``), their shared loop.

``train_loop`` is the loop both programs run: one jitted step per batch, a tqdm bar, periodic
evaluation, orbax checkpoints (every K steps, at the end, and on SIGTERM), throughput that
excludes compilation. ``run_cli`` turns the usual bad-input exceptions into a one-line error.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from pass_jax import checkpoint, data

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the shell's code for "terminated", after a clean save
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


@dataclasses.dataclass
class LoopResult:
    """End of a ``train_loop`` run."""

    state: Any
    step: int  # steps done (the checkpoint step)
    preempted: bool  # stopped by SIGTERM after saving; re-run the same command to resume
    steps_run: int  # steps run in this process
    steps_per_s: float  # after the first step (compilation), evaluation and saves excluded
    wall_s: float  # this process's loop time, compilation included


def train_loop(state: Any, step_fn: Callable[[Any, dict], tuple[Any, dict]],
               batches: Iterator[dict], *, start_step: int, steps: int, mngr,
               meta_fn: Callable[[int], dict], evaluate: Callable[[Any, int], dict] | None = None,
               eval_every: int = 0, postfix_fn: Callable[[dict], dict] = lambda m: m,
               log_every: int = 10, tokens_per_step: int = 0,
               desc: str = "train") -> LoopResult:
    """Runs ``state, metrics = step_fn(state, batch)`` from ``start_step`` to ``steps``.

    ``batches`` is the grain iterator from ``data.token_batches`` (its state is saved with each
    checkpoint). ``evaluate(state, step)`` runs every ``eval_every`` steps and at the end and
    returns scalars for the bar. ``postfix_fn`` turns host metrics into the bar's postfix (every
    ``log_every`` steps), shown next to tokens/s when ``tokens_per_step`` is given. A checkpoint
    (``meta_fn(step)`` as metadata) is saved whenever ``mngr``'s policy says so, at the last
    step, and when SIGTERM arrives, after which the loop stops.
    """
    step, shown, t_start, t_first = start_step, {}, time.perf_counter(), None
    preempted, t_aside = False, 0.0  # t_aside: evaluation and checkpoint time, not step time
    with checkpoint.Preemption() as preemption, \
            tqdm(total=steps, initial=start_step, desc=desc, unit="step", mininterval=0.5,
                 dynamic_ncols=True) as bar:
        while step < steps:
            state, metrics = step_fn(state, next(batches))
            step += 1
            if t_first is None:
                jax.block_until_ready(state)
                t_first = time.perf_counter()
            if step % log_every == 0 or step == steps:
                shown.update(postfix_fn(jax.device_get(metrics)))
                timed_s = time.perf_counter() - t_first - t_aside
                if tokens_per_step and step - start_step > 1 and timed_s > 0:
                    shown["tok/s"] = f"{(step - start_step - 1) * tokens_per_step / timed_s:.0f}"
            if evaluate is not None and (step == steps or (eval_every and step % eval_every == 0)):
                t = time.perf_counter()
                shown.update(evaluate(jax.block_until_ready(state), step))
                t_aside += time.perf_counter() - t
            bar.set_postfix(_fmt(shown), refresh=False)
            bar.update(1)
            preempted = preemption.should_stop(step)
            if preempted or step == steps or mngr.should_save(step):
                jax.block_until_ready(state)
                t = time.perf_counter()
                checkpoint.save(mngr, step, state, data_state=data.iterator_state(batches),
                                meta=meta_fn(step), force=True)
                t_aside += time.perf_counter() - t
            if preempted:
                bar.write(f"{desc}: signal {preemption.signum} at step {step}: checkpoint saved; "
                          "re-run the same command to resume", file=sys.stderr)
                break
    mngr.wait_until_finished()
    jax.block_until_ready(state)
    t_end = time.perf_counter()
    steps_run = step - start_step
    timed = steps_run - 1
    if timed > 0:
        rate = timed / (t_end - t_first - t_aside)
    else:
        rate = steps_run / max(t_end - t_start, 1e-9)
    return LoopResult(state, step, preempted, steps_run, rate, t_end - t_start)


def _fmt(values: dict) -> dict:
    """Bar postfix: floats to 4 significant digits."""
    return {k: f"{v:.4g}" if isinstance(v, (float, np.floating)) else v
            for k, v in values.items()}


def require(section: Any, keys: Iterable[str], where: str) -> dict:
    """Returns ``section`` if it is a dict with every key in ``keys``; else a ValueError naming
    what is missing from ``where`` (a config file section)."""
    if not isinstance(section, dict):
        raise ValueError(f"{where} is missing or not a mapping")
    missing = [k for k in keys if k not in section]
    if missing:
        raise ValueError(f"{where} is missing {', '.join(missing)}")
    return section


def run_cli(main: Callable[[], int]) -> int:
    """Runs a program's ``main``; bad input (ValueError, missing files): ``error: ...``, exit 2."""
    try:
        return main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
