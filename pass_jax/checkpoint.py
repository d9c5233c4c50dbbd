"""Training checkpoints: orbax CheckpointManager helpers, exact resume, preemption handling.

A checkpoint step directory holds three items:

* ``state``: the training pytree (params or LA embeddings, optimizer state, step, RNG key), saved
  with ``StandardSave`` and restored into an abstract target (``jax.ShapeDtypeStruct`` leaves,
  optionally carrying shardings, so a sharded job restores straight onto its mesh);
* ``data``: each process's data iterator position, the JSON string of ``data.iterator_state``,
  in a file of its own, ``process_<i>-of-<n>.json`` (each process reads its own shard of the
  data, so each has its own position; a string, as grain's own JSON round trip loses the tuples
  that packing needs to resume). A checkpoint resumes only with the process count that saved it;
  another count is a ValueError naming both;
* ``meta``: small JSON metadata (config, metrics at save time).

Atomicity: orbax writes a step into ``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>``
only once every item is written, so a save killed midway (kill -9, power loss) leaves a temporary
directory that is never listed as a step and is deleted when the next manager opens the
directory; the previous finalized step stays the latest.

Preemption: ``Preemption`` turns SIGTERM (what a preempted TPU VM receives) and, in the train
loop, SIGINT (Ctrl-C) into a flag the loop polls after each step; the loop then saves a checkpoint
and exits cleanly. With several processes a signal goes to JAX's preemption service instead (a
SIGTERM to any process reaches every one), and every process stops at orbax's preemption sync
point, so all save the same step.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from etils import epath
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


_COUNT = re.compile(r"process_\d+-of-(\d+)\.json")  # a data item file; group 1: the count


def _process_file(index: int, count: int) -> str:
    """The data item's file of process ``index`` of ``count``."""
    return f"process_{index}-of-{count}.json"


class DataStateHandler(ocp.CheckpointHandler):
    """The ``data`` item: every process writes and reads its own iterator JSON string
    (``process_<i>-of-<n>.json``), as grain's own orbax handler does, keeping the string as it
    is (grain's handler would parse it and lose its tuples)."""

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        """Writes this process's ``args.state`` into ``directory``."""
        name = _process_file(jax.process_index(), jax.process_count())
        (directory / name).write_text(args.state)

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> str:
        """This process's iterator JSON string; a ValueError naming both process counts if the
        checkpoint was saved by another number of processes."""
        index, count = jax.process_index(), jax.process_count()
        path = directory / _process_file(index, count)
        if not path.exists():
            saved = sorted(
                {m.group(1) for p in directory.iterdir() if (m := _COUNT.fullmatch(p.name))}
            )
            if not saved:
                raise ValueError(
                    f"checkpoint {directory.parent} holds no data iterator position for "
                    f"process {index} of {count} ({path.name} is missing)"
                )
            raise ValueError(
                f"checkpoint {directory.parent} was saved by {' or '.join(saved)} processes, "
                f"this run has {count}: each process's place in its shard of the data resumes "
                "only with the process count that saved it"
            )
        return path.read_text()

    def metadata(self, directory: epath.Path) -> None:
        """No metadata."""
        return None


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    """Saves this process's iterator JSON string (``data.iterator_state``)."""

    state: str


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    """Restores this process's iterator JSON string."""


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    state: Any,
    *,
    data_state: str,
    meta: dict[str, Any] | None = None,
    force: bool = False,
) -> bool:
    """Saves ``state`` (a pytree of arrays), this process's iterator JSON ``data_state`` and
    ``meta`` at ``step`` if the save policy says so or ``force``; returns whether a save
    happened. Every process calls it (each with its own ``data_state``).

    A step that is already saved is not written again (returns False).
    """
    if step in mngr.all_steps():
        return False
    args = ocp.args.Composite(
        **{
            STATE: ocp.args.StandardSave(state),
            DATA: DataStateSave(data_state),
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
    data_state: str  # this process's iterator JSON string given to ``save``
    meta: dict[str, Any]


def restore(mngr: ocp.CheckpointManager, target: Any, step: int | None = None) -> Restored:
    """Restores ``step`` (default: the latest finalized one) into the structure of ``target``.

    ``target`` is a pytree like the saved state, of arrays or ``jax.ShapeDtypeStruct`` (see
    ``abstract_like``; its shardings place the result). Raises FileNotFoundError if the
    directory has no finalized checkpoint, ValueError if another number of processes saved it.
    """
    step = latest_step(mngr) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no finalized checkpoint in {mngr.directory}")
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            **{
                STATE: ocp.args.StandardRestore(abstract_like(target)),
                DATA: DataStateRestore(),
                META: ocp.args.JsonRestore(),
            }
        ),
    )
    return Restored(step, out[STATE], out[DATA], dict(out[META]))


class Preemption:
    """Context manager turning ``signals`` (default SIGTERM) into a flag the train loop polls.

    ``with Preemption() as pre: ... if pre.should_stop(step): save; break``. The previous signal
    handlers are restored on exit. A second signal while the flag is already set falls back to
    the previous handler (so a stuck job can still be terminated; a second Ctrl-C raises
    KeyboardInterrupt).

    With several processes, stopping is a decision all of them must share (they save the same
    step together): SIGTERM is left to JAX's preemption service, which tells every process, any
    other signal is passed on to it as a SIGTERM, and ``should_stop`` is true at orbax's
    preemption sync point, the same step on every process.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.multi_process = jax.process_count() > 1
        self.signals = tuple(s for s in signals if not (self.multi_process and s == signal.SIGTERM))
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
        if self.multi_process:  # JAX's SIGTERM handler tells every process
            os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> Preemption:
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        """True once a signal arrived; with several processes, at the preemption sync point
        (every process calls this after every step)."""
        if self.multi_process:
            return ocp.utils.reached_preemption(step)
        return self.requested
