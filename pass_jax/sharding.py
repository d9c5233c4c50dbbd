"""Device mesh, partition rules, specs and batch placement (SPMD over ``data``, ``fsdp``,
``tensor``).

A leaf: it knows meshes and shardings and nothing of the model. Other modules call it to
annotate their arrays (``hf.load_hf(..., mesh=)``, ``model.init_params_sharded``,
``cache.init_cache(..., mesh=)``, ``losses.make_la_train_step(..., mesh=)``,
``decode.generate(..., mesh=)``); JAX's own SPMD does all the communication: arrays carry a
``NamedSharding`` over a 3-axis mesh, the unchanged model / decode / loss code is jitted, and XLA's
partitioner inserts collectives. Without a mesh those functions run on the default device.

Mesh axes:
  * ``data``   - pure data parallelism (batch rows; parameters replicated along it),
  * ``fsdp``   - batch rows *and* parameter storage (weights split on their d_model side and
                 all-gathered per layer by the partitioner),
  * ``tensor`` - Megatron-style model parallelism (attention heads, MLP hidden units, vocabulary).

Partition rules map the ``'/'``-joined parameter path (``layers/q/kernel``) to a spec per dim
(see ``PARAM_RULES``): attention q/k/v and MLP gate/up/fc kernels ``[I, D, out]`` ->
``(None, 'fsdp', 'tensor')``; o/down/proj ``[I, in, D]`` -> ``(None, 'tensor', 'fsdp')``;
embedding ``[V, D]`` -> ``('tensor', 'fsdp')``; lm_head ``[D, V]`` -> ``('fsdp', 'tensor')``;
norms, position embeddings and everything else replicated. Batches are split over
``('data', 'fsdp')``; look-ahead (LA) parameters and their optimizer state are replicated
(L x D is tiny). A dim whose size is not divisible by its mesh axes falls back to fewer axes (or
replication), logged at DEBUG level, so tiny test models run on any mesh.

Multi-host (TPU pod slices, several GPU hosts): call :func:`maybe_initialize_distributed` first
(flags or environment); every process then builds the same global mesh over ``jax.devices()``
and feeds its own rows of each batch (:func:`shard_batch`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# --------------------------------------------------------------------------- meshes


def parse_mesh(
    spec: str | Mapping[str, int] | None, num_devices: int | None = None
) -> dict[str, int]:
    """Axis sizes ``{'data': d, 'fsdp': f, 'tensor': t}`` from ``"data=2,fsdp=1,tensor=4"``.

    Also accepts a dict (e.g. from YAML), or three comma-separated integers ``"2,1,4"``. Missing
    axes are 1; one axis may be -1, meaning "all remaining devices" (needs ``num_devices``,
    default ``jax.device_count()``). ``None`` or ``""`` means ``fsdp=-1``.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        spec = {"fsdp": -1}
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
        if items and all("=" not in s for s in items):
            if len(items) != len(AXES):
                raise ValueError(
                    f"mesh {spec!r}: give {len(AXES)} sizes ({','.join(AXES)}) or name=size pairs"
                )
            items = [f"{a}={s}" for a, s in zip(AXES, items)]
        parsed: dict[str, int] = {}
        for item in items:
            if "=" not in item:
                raise ValueError(f"mesh {spec!r}: {item!r} is not of the form axis=size")
            name, size = (s.strip() for s in item.split("=", 1))
            if name in parsed:
                raise ValueError(f"mesh {spec!r}: axis {name!r} given twice")
            try:
                parsed[name] = int(size)
            except ValueError:
                raise ValueError(f"mesh {spec!r}: size of {name!r} is not an integer") from None
        spec = parsed
    sizes = dict(spec)
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the axes are {', '.join(AXES)}")
    sizes = {a: int(sizes.get(a, 1)) for a in AXES}
    rest = [a for a, s in sizes.items() if s == -1]
    bad = [a for a, s in sizes.items() if s < 1 and s != -1]
    if bad or len(rest) > 1:
        raise ValueError(f"mesh sizes must be >= 1 with at most one -1, got {sizes}")
    if rest:
        n = jax.device_count() if num_devices is None else num_devices
        known = math.prod(s for s in sizes.values() if s != -1)
        if n % known:
            raise ValueError(f"mesh {sizes}: {n} devices are not divisible by {known}")
        sizes[rest[0]] = n // known
    return sizes


def make_mesh(
    spec: str | Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ``Mesh`` with axes ``('data', 'fsdp', 'tensor')`` over ``devices`` (default: all).

    The product of the sizes must equal the number of devices. Axis types are ``Auto`` (XLA
    propagates shardings through unannotated code, so the library's functions run unchanged).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh {sizes} has {math.prod(shape)} devices, "
            f"{len(devices)} are available (use -1 for 'the rest')"
        )
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Waits until ``host:port`` accepts TCP connections; ValueError after ``timeout_s`` (JAX's
    own client aborts the whole process when the coordinator never answers)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator {address!r} is not host:port")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"multi-host: the coordinator {address} did not answer within "
                    f"{timeout_s} s (--init-timeout); is process 0 running "
                    f"there? ({e})"
                ) from None
            time.sleep(0.5)


def maybe_initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> bool:
    """Call ``jax.distributed.initialize`` when multi-host is configured; returns whether it is.

    Configured means: ``coordinator`` given (``"host:port"``, or ``"auto"`` to let JAX detect
    the cluster: TPU pod slices, SLURM, ...), or the environment variables
    ``JAX_COORDINATOR_ADDRESS`` (+ ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) or
    ``PASS_JAX_DISTRIBUTED=1`` (auto-detect). Must run before any other JAX computation;
    calling it again is a no-op. A process count or id without a coordinator, an id outside
    [0, count), or processes that do not all join within ``timeout_s`` seconds: ValueError.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    auto = coordinator == "auto" or (
        coordinator is None and env.get("PASS_JAX_DISTRIBUTED", "") in ("1", "true")
    )
    if coordinator is None and not auto:
        if num_processes is not None or process_id is not None:
            raise ValueError(
                "--num-processes / --process-id need --coordinator host:port (the "
                "address of process 0; or 'auto' on TPU pods and SLURM)"
            )
        return False
    if not auto and (num_processes is None or process_id is None):
        raise ValueError(f"--coordinator {coordinator} needs --num-processes and --process-id")
    if not auto and not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id {process_id} is not in [0, --num-processes {num_processes})"
        )
    print(
        f"multi-host: process {'?' if auto else process_id} of "
        f"{'?' if auto else num_processes} joining {coordinator or 'the detected cluster'} "
        f"(waiting up to {timeout_s} s, --init-timeout)",
        file=sys.stderr,
        flush=True,
    )
    if not auto and process_id != 0:
        wait_for_coordinator(coordinator, timeout_s)
    try:
        if auto:
            jax.distributed.initialize(initialization_timeout=timeout_s)
        else:
            jax.distributed.initialize(
                coordinator, num_processes, process_id, initialization_timeout=timeout_s
            )
    except (RuntimeError, jax.errors.JaxRuntimeError) as e:
        raise ValueError(
            f"multi-host: the processes did not all join "
            f"{coordinator or 'the detected cluster'} within {timeout_s} s "
            f"(--init-timeout): {str(e).splitlines()[0]}"
        ) from e
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


# --------------------------------------------------------------------------- partition rules

Axes = str | tuple[str, ...] | None

# (regex over the '/'-joined path, per-dim axes). First match wins; no match -> replicated.
PARAM_RULES: tuple[tuple[str, tuple[Axes, ...]], ...] = (
    (r"(^|/)embed/embedding$", ("tensor", "fsdp")),  # [V, D]
    (r"(^|/)lm_head/kernel$", ("fsdp", "tensor")),  # [D, V]
    (r"(^|/)layers/(q|k|v|gate|up|fc)/kernel$", (None, "fsdp", "tensor")),  # [I, D, out]
    (r"(^|/)layers/(q|k|v|gate|up|fc)/bias$", (None, "tensor")),  # [I, out]
    (r"(^|/)layers/(o|down|proj)/kernel$", (None, "tensor", "fsdp")),  # [I, in, D]
    (r"(^|/)layers_\d+/(q|k|v|gate|up|fc)/kernel$", ("fsdp", "tensor")),  # unstacked [D, out]
    (r"(^|/)layers_\d+/(q|k|v|gate|up|fc)/bias$", ("tensor",)),  # [out]
    (r"(^|/)layers_\d+/(o|down|proj)/kernel$", ("tensor", "fsdp")),  # [in, D]
    (r"norm/(scale|bias)$", ()),  # norms replicated
)


def _axes_tuple(axes: Axes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def fit_spec(
    shape: Sequence[int],
    axes_per_dim: Sequence[Axes],
    mesh_shape: Mapping[str, int],
    what: str = "array",
) -> P:
    """``PartitionSpec`` for ``shape`` from the wanted axes per dim, keeping only what divides.

    For a dim with several axes, the full group is tried, then each single axis in order; a dim
    that no axis divides is replicated. Every fallback is logged at DEBUG level.
    """
    out: list[Axes] = []
    for dim, (size, axes) in enumerate(zip(shape, list(axes_per_dim) + [None] * len(shape))):
        want = _axes_tuple(axes)
        chosen: tuple[str, ...] = ()
        for cand in [want] + [(a,) for a in want] if len(want) > 1 else [want]:
            n = math.prod(mesh_shape.get(a, 1) for a in cand)
            if cand and size % n == 0 and (cand == want or n > 1):
                chosen = cand
                break
        if want and chosen != want:
            log.debug(
                "%s: dim %d (size %d) is not divisible by mesh axes %s (%s); using %s",
                what,
                dim,
                size,
                want,
                {a: mesh_shape.get(a, 1) for a in want},
                chosen or "replication",
            )
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def spec_shards(spec: P, mesh_shape: Mapping[str, int]) -> int:
    """How many pieces an array with ``spec`` is split into on a mesh of that shape."""
    return math.prod(math.prod(mesh_shape.get(a, 1) for a in _axes_tuple(ax)) for ax in spec)


def path_str(path) -> str:
    """``'layers/q/kernel'`` from a ``tree_flatten_with_path`` key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def param_spec(
    path: str, shape: Sequence[int], mesh_shape: Mapping[str, int], rules=PARAM_RULES
) -> P:
    """The ``PartitionSpec`` of one parameter (see ``PARAM_RULES``) for a mesh of that shape."""
    for pattern, axes in rules:
        if re.search(pattern, path):
            if len(axes) > len(shape):
                raise ValueError(
                    f"rule {pattern!r} has {len(axes)} dims, {path} has shape {tuple(shape)}"
                )
            return fit_spec(shape, axes, mesh_shape, path)
    return P()


def mesh_shape(mesh) -> dict[str, int]:
    """Axis sizes of a ``Mesh``, a ``"data=..,fsdp=..,tensor=.."`` string or a dict."""
    if isinstance(mesh, Mesh):
        return dict(mesh.shape)
    return parse_mesh(mesh, None) if isinstance(mesh, str) else dict(mesh)


def param_specs(params, mesh, rules=PARAM_RULES):
    """Tree of ``PartitionSpec`` for a params tree (arrays or ``ShapeDtypeStruct``s)."""
    ms = mesh_shape(mesh)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: param_spec(path_str(path), np.shape(x), ms, rules), params
    )


def param_shardings(abstract_params, mesh: Mesh, rules=PARAM_RULES):
    """Tree of ``NamedSharding`` for the base params (their shapes are all that is read)."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        param_specs(abstract_params, mesh, rules),
        is_leaf=lambda x: isinstance(x, P),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated on ``mesh`` (LA params, optimizer state, scalars)."""
    return NamedSharding(mesh, P())


def shard_params(params, mesh: Mesh, rules=PARAM_RULES):
    """Place (or re-place) a params tree on ``mesh`` by the rules."""
    return jax.device_put(params, param_shardings(params, mesh, rules))


def replicate(tree, mesh: Mesh):
    """Place a tree fully replicated on ``mesh`` (LA training state: params, optimizer moments)."""
    return jax.device_put(tree, replicated(mesh))


def put_sharded(host_array: np.ndarray, sharding: NamedSharding, dtype=None) -> jax.Array:
    """A global ``jax.Array`` built shard by shard from a host (numpy) array: each addressable
    device receives only its slice."""
    arr = np.asarray(host_array)
    if dtype is not None and arr.dtype != jnp.dtype(dtype):
        arr = arr.astype(jnp.dtype(dtype))
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])


# --------------------------------------------------------------------------- batches


def batch_spec(shape: Sequence[int], mesh) -> P:
    """Rows over ``('data', 'fsdp')`` (fallbacks as in :func:`fit_spec`), other dims whole."""
    return fit_spec(shape, (BATCH_AXES,), mesh_shape(mesh), "batch")


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """The sharding of a ``[B, ...]`` batch array on ``mesh``."""
    return NamedSharding(mesh, batch_spec(shape, mesh))


def batch_divisor(mesh) -> int:
    """Rows must be a multiple of this (``data * fsdp``) to be split over every batch shard."""
    ms = mesh_shape(mesh)
    return math.prod(ms.get(a, 1) for a in BATCH_AXES)


def shard_batch(batch, mesh: Mesh, process_local: bool | None = None):
    """Put a tree of ``[B, ...]`` arrays on ``mesh``, rows split over ``('data', 'fsdp')``.

    With several processes (``process_local`` defaults to ``jax.process_count() > 1``) each
    process passes *its own* rows (``B / process_count`` of them) and the global array is
    assembled with ``jax.make_array_from_process_local_data``.
    """
    if process_local is None:
        process_local = jax.process_count() > 1

    def put(x):
        x = np.asarray(x)
        if process_local:
            gshape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
            if gshape[0] % batch_divisor(mesh):
                raise ValueError(
                    f"global batch of {gshape[0]} rows ({x.shape[0]} per process) "
                    f"is not divisible by data x fsdp = {batch_divisor(mesh)}"
                )
            s = batch_sharding(mesh, gshape)
            return jax.make_array_from_process_local_data(s, x, gshape)
        return put_sharded(x, batch_sharding(mesh, x.shape))

    return jax.tree.map(put, batch)


def to_host(x) -> np.ndarray:
    """A global array on the host of every process (gathers non-addressable shards)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
