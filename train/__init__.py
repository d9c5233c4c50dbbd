"""Training programs (``python -m train.base``, ``python -m train.lookahead``), their shared loop.

``train_loop`` is the loop both programs run: one jitted step per batch, a tqdm bar, periodic
evaluation, orbax checkpoints (every K steps, at the end, and on SIGTERM or Ctrl-C), throughput
that excludes compilation. The checks both programs make before any work live here too (seeds,
output directories, whether a checkpoint can be resumed), and the restore that follows. The
programs' settings are in ``train.config``; ``program_config.run_cli``, which every program's
``__main__`` uses, turns bad input into a one-line error and exit status 2.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from pass_jax import checkpoint, data
from pass_jax.program_config import differences

MAX_SEED = 2**31 - 1  # grain takes seeds below 2**32, and the programs also use seed + 1


@dataclasses.dataclass
class LoopResult:
    """End of a ``train_loop`` run."""

    state: Any
    step: int  # steps done (the checkpoint step)
    signum: int | None  # the signal (SIGTERM, SIGINT) that stopped the loop after a save, or None
    steps_run: int  # steps run in this process
    steps_per_s: float  # after the first step (compilation), evaluation and saves excluded
    wall_s: float  # this process's loop time, compilation included

    @property
    def preempted(self) -> bool:
        """Stopped by a signal after saving; re-running the same command resumes."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The shell's status for the stop: 0, or 128 + the signal (143 SIGTERM, 130 SIGINT)."""
        return 0 if self.signum is None else 128 + self.signum


def train_loop(
    state: Any,
    step_fn: Callable[[Any, dict], tuple[Any, dict]],
    batches: Iterator[dict],
    *,
    start_step: int,
    steps: int,
    mngr,
    meta_fn: Callable[[int], dict],
    evaluate: Callable[[Any, int], dict] | None = None,
    eval_every: int = 0,
    postfix_fn: Callable[[dict], dict] = lambda m: m,
    log_every: int = 10,
    tokens_per_step: int = 0,
    desc: str = "train",
) -> LoopResult:
    """Runs ``state, metrics = step_fn(state, batch)`` from ``start_step`` to ``steps``.

    ``batches`` is the grain iterator from ``data.token_batches`` (its state is saved with each
    checkpoint). ``evaluate(state, step)`` runs every ``eval_every`` steps and at the end and
    returns scalars for the bar. ``postfix_fn`` turns host metrics into the bar's postfix (every
    ``log_every`` steps), shown next to tokens/s when ``tokens_per_step`` is given. A checkpoint
    (``meta_fn(step)`` as metadata) is saved whenever ``mngr``'s policy says so, at the last
    step, and when SIGTERM or SIGINT (Ctrl-C) arrives, after which the loop stops; a second one
    falls back to the signal's usual handling (Ctrl-C twice aborts at once).
    """
    step, shown, t_start, t_first = start_step, {}, time.perf_counter(), None
    preempted, t_aside = False, 0.0  # t_aside: evaluation and checkpoint time, not step time
    signum = None  # the signal that stopped the loop
    with (
        checkpoint.Preemption((signal.SIGTERM, signal.SIGINT)) as preemption,
        tqdm(
            total=steps,
            initial=start_step,
            desc=desc,
            unit="step",
            mininterval=0.5,
            dynamic_ncols=True,
        ) as bar,
    ):
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
                checkpoint.save(
                    mngr,
                    step,
                    state,
                    data_state=data.iterator_state(batches),
                    meta=meta_fn(step),
                    force=True,
                )
                t_aside += time.perf_counter() - t
            if preempted:
                signum = preemption.signum or signal.SIGTERM  # None: a multi-host preemption
                bar.write(
                    f"{desc}: {signal.Signals(signum).name} at step {step}: checkpoint "
                    "saved; re-run the same command to resume",
                    file=sys.stderr,
                )
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
    return LoopResult(state, step, signum, steps_run, rate, t_end - t_start)


def _fmt(values: dict) -> dict:
    """Bar postfix: floats to 4 significant digits."""
    return {k: f"{v:.4g}" if isinstance(v, (float, np.floating)) else v for k, v in values.items()}


def check_seed(seed: int, name: str) -> None:
    """Raises a ValueError unless ``seed`` (given as ``name``) is in 0..MAX_SEED."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to {MAX_SEED}, got {seed}")


def check_output_dir(path: str, name: str) -> None:
    """Raises a user error now, before any work, if directory ``path`` (given as ``name``) could
    not be created or written later: it or a parent is a file, or the nearest existing directory
    on its way is read-only."""
    existing = target = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    culprit = f"{name} {path}" + ("" if existing == target else f": {existing}")
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{culprit} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{culprit} is not writable")


def check_resume(mngr, resume_key: dict, remedy: str, defaults: dict | None = None) -> int | None:
    """The latest checkpoint step in ``mngr`` (None if there is none), once its saved
    ``resume_key`` metadata is known to agree with ``resume_key`` (the run's config less what may
    change on resume: ``program_config.resume_view``; a setting the checkpoint predates counts as
    its value in ``defaults``, ``program_config.resume_defaults``); otherwise a ValueError naming
    the settings that differ, ending with ``remedy``. Only the metadata is read: a checkpoint
    made with other settings may hold a state of other shapes, which orbax cannot restore."""
    step = checkpoint.latest_step(mngr)
    if step is None:
        return None
    saved = checkpoint.restore_meta(mngr, step).get("resume_key")
    changes = differences(saved or {}, resume_key, defaults=defaults)
    if changes:
        raise ValueError(
            f"the checkpoints in {mngr.directory} were made with other settings "
            f"({'; '.join(changes)}); {remedy}"
        )
    return step


def restore(
    mngr, step: int | None, target: Any, batches: Iterator[dict]
) -> checkpoint.Restored | None:
    """Checkpoint ``step`` of ``mngr`` (from ``check_resume``; None: nothing to resume) restored
    into ``target`` (a state or its abstract shapes), with the data iterator ``batches`` moved
    to where it was; says so on stderr."""
    if step is None:
        return None
    restored = checkpoint.restore(mngr, target, step)
    data.restore_iterator(batches, restored.data_state)
    print(f"resuming from step {restored.step} ({mngr.directory})", file=sys.stderr)
    return restored
