"""Training checkpoints: orbax CheckpointManager helpers, exact resume, preemption handling.

A checkpoint step directory holds three items:

* ``state``: the training pytree (params or LA embeddings, optimizer state, step, RNG key), saved
  with ``StandardSave`` and restored into an abstract target (``jax.ShapeDtypeStruct`` leaves,
  optionally carrying shardings, so a sharded job restores straight onto its mesh);
* ``data``: the data iterator's position, the JSON string of ``data.iterator_state`` (kept as a
  string: grain's own JSON round trip loses the tuples that packing needs to resume);
* ``meta``: small JSON metadata (config, metrics at save time).

Atomicity: orbax writes a step into ``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>``
only once every item is written, so a save killed midway (kill -9, power loss) leaves a temporary
directory that is never listed as a step and is deleted when the next manager opens the
directory; the previous finalized step stays the latest.

Preemption: ``Preemption`` turns SIGTERM (what a preempted TPU VM receives) and, in the train
loop, SIGINT (Ctrl-C) into a flag the loop polls after each step; the loop then saves a checkpoint
and exits cleanly. Multi-host jobs also stop at orbax's preemption sync point, so every host
saves the same step.
"""

from __future__ import annotations

import os
import signal
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

STATE, DATA, META = "state", "data", "meta"
ITEM_NAMES = (STATE, DATA, META)


def manager(
    directory: str, *, save_every: int, keep: int = 2, async_save: bool = False
) -> ocp.CheckpointManager:
    """A CheckpointManager for ``directory`` (created if missing).

    Saves when the step is a multiple of ``save_every`` (or when forced, e.g. at the end or on
    preemption) and keeps the ``keep`` latest steps. Leftover temporary directories of
    interrupted saves are removed. ``async_save`` writes in a background thread; it is off by
    default because the train steps donate their state buffers, which on CPU may alias the host
    copy a background write would still be reading.
    """
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=checkpoint_managers.AnySavePolicy(
            [
                checkpoint_managers.FixedIntervalPolicy(save_every),
                checkpoint_managers.PreemptionCheckpointingPolicy(),
            ]
        ),
        preservation_policy=checkpoint_managers.LatestN(keep),
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
        create=True,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), item_names=ITEM_NAMES, options=options)


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    state: Any,
    *,
    data_state: str | None = None,
    meta: dict[str, Any] | None = None,
    force: bool = False,
) -> bool:
    """Saves ``state`` (a pytree of arrays), the iterator JSON ``data_state`` and ``meta`` at
    ``step`` if the save policy says so or ``force``; returns whether a save happened.

    A step that is already saved is not written again (returns False).
    """
    if step in mngr.all_steps():
        return False
    args = ocp.args.Composite(
        **{
            STATE: ocp.args.StandardSave(state),
            DATA: ocp.args.JsonSave({"iterator": data_state}),
            META: ocp.args.JsonSave(meta or {}),
        }
    )
    return mngr.save(step, args=args, force=force)


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
    """The newest finalized step in the manager's directory (re-read from disk), or None."""
    mngr.reload()
    return mngr.latest_step()


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """``jax.ShapeDtypeStruct`` leaves with the shapes and dtypes of ``tree`` (arrays or
    ShapeDtypeStructs, e.g. from ``jax.eval_shape``), as a restore target.

    ``shardings`` (a matching pytree of ``jax.sharding.Sharding``, or one for every leaf)
    places the restored arrays, e.g. on another mesh than they were saved from; leaves without
    one keep their own sharding or go to the first local device.
    """
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x, sharding=None):
        sharding = sharding or getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    if shardings is None:
        return jax.tree.map(leaf, tree)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: leaf(x, shardings), tree)
    return jax.tree.map(leaf, tree, shardings)


def has_checkpoint(directory: str) -> bool:
    """True if ``directory`` holds a finalized checkpoint (a ``<step>`` directory)."""
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The ``meta`` item saved at ``step``, read alone: usable before a restore target exists."""
    out = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    return dict(out[META])


class Restored(NamedTuple):
    """What ``restore`` returns."""

    step: int
    state: Any
    data_state: str | None  # the iterator JSON string given to ``save``
    meta: dict[str, Any]


def restore(mngr: ocp.CheckpointManager, target: Any, step: int | None = None) -> Restored:
    """Restores ``step`` (default: the latest finalized one) into the structure of ``target``.

    ``target`` is a pytree like the saved state, of arrays or ``jax.ShapeDtypeStruct`` (see
    ``abstract_like``; its shardings place the result). Raises FileNotFoundError if the
    directory has no finalized checkpoint.
    """
    step = latest_step(mngr) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no finalized checkpoint in {mngr.directory}")
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            **{
                STATE: ocp.args.StandardRestore(abstract_like(target)),
                DATA: ocp.args.JsonRestore(),
                META: ocp.args.JsonRestore(),
            }
        ),
    )
    return Restored(step, out[STATE], out[DATA]["iterator"], dict(out[META]))


class Preemption:
    """Context manager turning ``signals`` (default SIGTERM) into a flag the train loop polls.

    ``with Preemption() as pre: ... if pre.should_stop(step): save; break``. The previous signal
    handlers are restored on exit. A second signal while the flag is already set falls back to
    the previous handler (so a stuck job can still be terminated; a second Ctrl-C raises
    KeyboardInterrupt).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self.requested, self.signum = True, signum

    def __enter__(self) -> Preemption:
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        """True once a signal arrived, or (multi-host) at orbax's preemption sync point."""
        return self.requested or (jax.process_count() > 1 and ocp.utils.reached_preemption(step))
