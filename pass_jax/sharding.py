"""Device mesh, partition rules and sharded entry points (SPMD over ``data``, ``fsdp``, ``tensor``).

JAX's own SPMD does all the communication: arrays carry a ``NamedSharding`` over a 3-axis mesh,
the unchanged model / decode / loss code is jitted, and XLA's partitioner inserts collectives.

Mesh axes:
  * ``data``   - pure data parallelism (batch rows; parameters replicated along it),
  * ``fsdp``   - batch rows *and* parameter storage (weights split on their d_model side and
                 all-gathered per layer by the partitioner),
  * ``tensor`` - Megatron-style model parallelism (attention heads, MLP hidden units, vocabulary).

Partition rules map the ``'/'``-joined parameter path (``layers/q/kernel``) to a spec per dim
(see ``PARAM_RULES``): attention q/k/v and MLP gate/up/fc kernels ``[N, D, out]`` ->
``(None, 'fsdp', 'tensor')``; o/down/proj ``[N, in, D]`` -> ``(None, 'tensor', 'fsdp')``;
embedding ``[V, D]`` -> ``('tensor', 'fsdp')``; lm_head ``[D, V]`` -> ``('fsdp', 'tensor')``;
norms, position embeddings and everything else replicated. Batches are split over
``('data', 'fsdp')``, the KV cache ``[N, B, K, S, E]`` over batch and kv heads, look-ahead (LA)
parameters and their optimizer state are replicated (L x D is tiny). A dim whose size is not
divisible by its mesh axes falls back to fewer axes (or replication), logged at DEBUG level, so
tiny test models run on any mesh.

On one device every mesh is ``(1, 1, 1)`` and the code path is the same.

Multi-host (TPU pod slices, several GPU hosts): call :func:`maybe_initialize_distributed` first
(flags or environment); every process then builds the same global mesh over ``jax.devices()``
and feeds its own rows of each batch (:func:`shard_batch`).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .cache import KVCache, cache_bytes_per_token
from .config import ModelConfig

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
MESH_ENV = "PASS_JAX_MESH"

# --------------------------------------------------------------------------- meshes


def parse_mesh(spec: str | Mapping[str, int] | None, num_devices: int | None = None
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
                raise ValueError(f"mesh {spec!r}: give {len(AXES)} sizes ({','.join(AXES)}) "
                                 "or name=size pairs")
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


def make_mesh(spec: str | Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` with axes ``('data', 'fsdp', 'tensor')`` over ``devices`` (default: all).

    The product of the sizes must equal the number of devices. Axis types are ``Auto`` (XLA
    propagates shardings through unannotated code, so the library's functions run unchanged).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {sizes} has {math.prod(shape)} devices, "
                         f"{len(devices)} are available (use -1 for 'the rest')")
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def add_mesh_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--mesh`` and the multi-host flags (``--coordinator``, ``--num-processes``,
    ``--process-id``) to a program's parser; use :func:`mesh_from_args` after parsing."""
    g = parser.add_argument_group("devices")
    g.add_argument("--mesh", default=os.environ.get(MESH_ENV),
                   help="device mesh, e.g. data=2,fsdp=1,tensor=4 (-1 = the rest; default "
                        f"fsdp=-1, or ${MESH_ENV})")
    g.add_argument("--coordinator", default=None,
                   help="multi-host: host:port of process 0 (or 'auto' on TPU pods / SLURM); "
                        "default $JAX_COORDINATOR_ADDRESS")
    g.add_argument("--num-processes", type=int, default=None, help="multi-host: process count")
    g.add_argument("--process-id", type=int, default=None, help="multi-host: this process")
    g.add_argument("--init-timeout", type=int, default=300,
                   help="multi-host: seconds to wait for every process to join (default 300)")
    return parser


def mesh_from_args(args: argparse.Namespace) -> Mesh:
    """Initialise multi-host JAX if configured, then build the ``--mesh`` mesh."""
    maybe_initialize_distributed(getattr(args, "coordinator", None),
                                 getattr(args, "num_processes", None),
                                 getattr(args, "process_id", None),
                                 getattr(args, "init_timeout", 300))
    return make_mesh(getattr(args, "mesh", None))


def load_model_for_args(args: argparse.Namespace, model_dir, dtype: str = "float32",
                        stacked: bool = True):
    """``(mesh, cfg, params)`` for a program: with ``--mesh`` (or multi-host flags) the weights
    go straight into their shards on that mesh; otherwise ``mesh`` is None and ``hf.load_hf``
    loads them on the default device. ``stacked=False``: per-layer params (decoding)."""
    from . import hf

    multi_host = args.coordinator or args.num_processes is not None or args.process_id is not None
    mesh = mesh_from_args(args) if args.mesh or multi_host else None
    if mesh is None:
        return None, *hf.load_hf(model_dir, dtype=dtype, stacked=stacked)
    return mesh, *load_hf_sharded(model_dir, mesh, dtype=dtype, stacked=stacked)


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
                raise ValueError(f"multi-host: the coordinator {address} did not answer within "
                                 f"{timeout_s} s (--init-timeout); is process 0 running "
                                 f"there? ({e})") from None
            time.sleep(0.5)


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, timeout_s: int = 300) -> bool:
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
    auto = coordinator == "auto" or (coordinator is None
                                     and env.get("PASS_JAX_DISTRIBUTED", "") in ("1", "true"))
    if coordinator is None and not auto:
        if num_processes is not None or process_id is not None:
            raise ValueError("--num-processes / --process-id need --coordinator host:port (the "
                             "address of process 0; or 'auto' on TPU pods and SLURM)")
        return False
    if not auto and (num_processes is None or process_id is None):
        raise ValueError(f"--coordinator {coordinator} needs --num-processes and --process-id")
    if not auto and not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id {process_id} is not in [0, --num-processes "
                         f"{num_processes})")
    print(f"multi-host: process {'?' if auto else process_id} of "
          f"{'?' if auto else num_processes} joining {coordinator or 'the detected cluster'} "
          f"(waiting up to {timeout_s} s, --init-timeout)", file=sys.stderr, flush=True)
    if not auto and process_id != 0:
        wait_for_coordinator(coordinator, timeout_s)
    try:
        if auto:
            jax.distributed.initialize(initialization_timeout=timeout_s)
        else:
            jax.distributed.initialize(coordinator, num_processes, process_id,
                                       initialization_timeout=timeout_s)
    except (RuntimeError, jax.errors.JaxRuntimeError) as e:
        raise ValueError(f"multi-host: the processes did not all join "
                         f"{coordinator or 'the detected cluster'} within {timeout_s} s "
                         f"(--init-timeout): {str(e).splitlines()[0]}") from e
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())
    return True


# --------------------------------------------------------------------------- partition rules

Axes = str | tuple[str, ...] | None

# (regex over the '/'-joined path, per-dim axes). First match wins; no match -> replicated.
PARAM_RULES: tuple[tuple[str, tuple[Axes, ...]], ...] = (
    (r"(^|/)embed/embedding$", ("tensor", "fsdp")),  # [V, D]
    (r"(^|/)lm_head/kernel$", ("fsdp", "tensor")),  # [D, V]
    (r"(^|/)layers/(q|k|v|gate|up|fc)/kernel$", (None, "fsdp", "tensor")),  # [N, D, out]
    (r"(^|/)layers/(q|k|v|gate|up|fc)/bias$", (None, "tensor")),  # [N, out]
    (r"(^|/)layers/(o|down|proj)/kernel$", (None, "tensor", "fsdp")),  # [N, in, D]
    (r"(^|/)layers_\d+/(q|k|v|gate|up|fc)/kernel$", ("fsdp", "tensor")),  # unstacked [D, out]
    (r"(^|/)layers_\d+/(q|k|v|gate|up|fc)/bias$", ("tensor",)),  # [out]
    (r"(^|/)layers_\d+/(o|down|proj)/kernel$", ("tensor", "fsdp")),  # [in, D]
    (r"norm/(scale|bias)$", ()),  # norms replicated
)


def _axes_tuple(axes: Axes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def fit_spec(shape: Sequence[int], axes_per_dim: Sequence[Axes], mesh_shape: Mapping[str, int],
             what: str = "array") -> P:
    """``PartitionSpec`` for ``shape`` from the wanted axes per dim, keeping only what divides.

    For a dim with several axes, the full group is tried, then each single axis in order; a dim
    that no axis divides is replicated. Every fallback is logged at DEBUG level.
    """
    out: list[Axes] = []
    for dim, (size, axes) in enumerate(zip(shape, list(axes_per_dim) + [None] * len(shape))):
        want = _axes_tuple(axes)
        chosen: tuple[str, ...] = ()
        for cand in ([want] + [(a,) for a in want] if len(want) > 1 else [want]):
            n = math.prod(mesh_shape.get(a, 1) for a in cand)
            if cand and size % n == 0 and (cand == want or n > 1):
                chosen = cand
                break
        if want and chosen != want:
            log.debug("%s: dim %d (size %d) is not divisible by mesh axes %s (%s); using %s",
                      what, dim, size, want, {a: mesh_shape.get(a, 1) for a in want},
                      chosen or "replication")
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


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


def param_spec(path: str, shape: Sequence[int], mesh_shape: Mapping[str, int],
               rules=PARAM_RULES) -> P:
    """The ``PartitionSpec`` of one parameter (see ``PARAM_RULES``) for a mesh of that shape."""
    for pattern, axes in rules:
        if re.search(pattern, path):
            if len(axes) > len(shape):
                raise ValueError(f"rule {pattern!r} has {len(axes)} dims, {path} has shape "
                                 f"{tuple(shape)}")
            return fit_spec(shape, axes, mesh_shape, path)
    return P()


def _mesh_shape(mesh) -> dict[str, int]:
    if isinstance(mesh, Mesh):
        return dict(mesh.shape)
    return parse_mesh(mesh, None) if isinstance(mesh, str) else dict(mesh)


def param_specs(params, mesh, rules=PARAM_RULES):
    """Tree of ``PartitionSpec`` for a params tree (arrays or ``ShapeDtypeStruct``s)."""
    ms = _mesh_shape(mesh)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: param_spec(path_str(path), np.shape(x), ms, rules), params)


def param_shardings(abstract_params, mesh: Mesh, rules=PARAM_RULES):
    """Tree of ``NamedSharding`` for the base params (their shapes are all that is read)."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                        param_specs(abstract_params, mesh, rules),
                        is_leaf=lambda x: isinstance(x, P))


def abstract_sharded(tree, shardings):
    """``ShapeDtypeStruct``s carrying ``shardings``: the restore target for orbax on a (maybe
    different) mesh. ``shardings`` is a tree matching ``tree`` or one sharding for all leaves."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                           sharding=shardings), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                        tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated on ``mesh`` (LA params, optimizer state, scalars)."""
    return NamedSharding(mesh, P())


def shard_params(params, mesh: Mesh, rules=PARAM_RULES):
    """Place (or re-place) a params tree on ``mesh`` by the rules."""
    return jax.device_put(params, param_shardings(params, mesh, rules))


def init_params_sharded(cfg: ModelConfig, rng: jax.Array, mesh: Mesh, rules=PARAM_RULES):
    """Random params created directly in their shards: ``jax.eval_shape`` for the shapes, then
    ``init_params`` jitted with ``out_shardings`` (no device ever holds a full copy)."""
    from .model import init_params

    init = lambda key: init_params(cfg, key)
    abstract = jax.eval_shape(init, rng)
    shardings = param_shardings(abstract, mesh, rules)
    return jax.jit(init, out_shardings=shardings)(rng)


def put_sharded(host_array: np.ndarray, sharding: NamedSharding, dtype=None) -> jax.Array:
    """A global ``jax.Array`` built shard by shard from a host (numpy) array: each addressable
    device receives only its slice."""
    arr = np.asarray(host_array)
    if dtype is not None and arr.dtype != jnp.dtype(dtype):
        arr = arr.astype(jnp.dtype(dtype))
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])


def load_hf_sharded(model_dir, mesh: Mesh, dtype: str = "float32",
                    param_dtype: str | None = None, rules=PARAM_RULES, stacked: bool = True):
    """``hf.load_hf`` with every weight put straight into its shards on ``mesh`` (``stacked``:
    as in ``hf.load_hf``).

    The checkpoint is read into host numpy arrays (one host copy of the model), then each leaf
    is handed to its devices slice by slice and freed; no device holds more than its shard.
    Multi-host: each process reads the files and transfers only its addressable slices.
    """
    import contextlib

    from . import hf

    d = hf._check_model_dir(model_dir)
    cfg = hf.config_from_hf(hf.read_hf_config(d), dtype=dtype, param_dtype=param_dtype)
    files = hf._weight_files(d)
    with contextlib.ExitStack() as stack:
        flat = hf._read_tensors(d, cfg, files, stack, stacked)
    ms = dict(mesh.shape)
    out = {}
    for path in list(flat):
        arr = flat.pop(path)
        spec = param_spec("/".join(path), arr.shape, ms, rules)
        out[path] = put_sharded(arr, NamedSharding(mesh, spec))
        del arr
    return cfg, hf._unflatten(out)


# --------------------------------------------------------------------------- batch and cache


def batch_spec(shape: Sequence[int], mesh) -> P:
    """Rows over ``('data', 'fsdp')`` (fallbacks as in :func:`fit_spec`), other dims whole."""
    return fit_spec(shape, (BATCH_AXES,), _mesh_shape(mesh), "batch")


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """The sharding of a ``[B, ...]`` batch array on ``mesh``."""
    return NamedSharding(mesh, batch_spec(shape, mesh))


def batch_divisor(mesh) -> int:
    """Rows must be a multiple of this (``data * fsdp``) to be split over every batch shard."""
    ms = _mesh_shape(mesh)
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
                raise ValueError(f"global batch of {gshape[0]} rows ({x.shape[0]} per process) "
                                 f"is not divisible by data x fsdp = {batch_divisor(mesh)}")
            s = batch_sharding(mesh, gshape)
            return jax.make_array_from_process_local_data(s, x, gshape)
        return put_sharded(x, batch_sharding(mesh, x.shape))

    return jax.tree.map(put, batch)


def cache_specs(cfg: ModelConfig, mesh, batch: int, per_layer: bool = False) -> KVCache:
    """``KVCache`` of ``PartitionSpec``: k/v ``[N, B, K, S, E]`` (or N per-layer ``[B, K, S, E]``)
    over batch and kv heads."""
    ms = _mesh_shape(mesh)
    shape = (cfg.n_layers, batch, cfg.n_kv_heads, 1, cfg.hd)
    kv = fit_spec(shape, (None, BATCH_AXES, "tensor", None, None), ms, "kv cache")
    if per_layer:
        kv = (P(*kv[1:]),) * cfg.n_layers
    return KVCache(k=kv, v=kv, lengths=fit_spec((batch,), (BATCH_AXES,), ms, "cache lengths"))


def cache_sharding(cfg: ModelConfig, mesh: Mesh, batch: int, per_layer: bool = False) -> KVCache:
    """``KVCache`` of ``NamedSharding`` for a cache of ``batch`` rows on ``mesh``."""
    specs = cache_specs(cfg, mesh, batch, per_layer)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


def init_cache_sharded(cfg: ModelConfig, batch: int, max_len: int, mesh: Mesh,
                       dtype=None, per_layer: bool = False) -> KVCache:
    """An empty cache created directly in its shards (``init_cache`` jitted with
    ``out_shardings``)."""
    from .cache import init_cache

    return jax.jit(lambda: init_cache(cfg, batch, max_len, dtype, per_layer),
                   out_shardings=cache_sharding(cfg, mesh, batch, per_layer))()


# --------------------------------------------------------------------------- programs


def place_decode_inputs(inputs, mesh: Mesh):
    """``decode.generate``'s host inputs on ``mesh``: ``(la, prompt_BxP, prompt_len_B, active_B,
    eos_E, rng)`` with the LA embeddings, EOS ids and RNG replicated, the per-row arrays split
    over the batch axes."""
    la, prompt_BxP, prompt_len_B, active_B, eos_E, rng = inputs
    rep = replicated(mesh)
    rows = shard_batch((prompt_BxP, prompt_len_B, active_B), mesh, process_local=False)
    return (jax.device_put(np.asarray(la), rep), *rows, jax.device_put(eos_E, rep),
            jax.device_put(rng, rep))


@functools.lru_cache(maxsize=32)
def decode_state_sharding(mesh: Mesh, batch: int, cfg: ModelConfig, per_layer: bool = False):
    """A ``decode.DecodeState`` of shardings: the cache by the rules, per-row fields (``*_B``,
    ``*_Bx*``) over the batch axes, the rest replicated. ``decode.generate`` pins the loop state
    to it inside the ``while_loop`` (``DecodeSpec.state_sharding``) and returns it so."""
    from .decode import DecodeState

    rows, rep = batch_sharding(mesh, (batch,)), replicated(mesh)
    cache = cache_sharding(cfg, mesh, batch, per_layer)

    def field(name):
        if name == "cache":
            return cache
        return rows if name.endswith("_B") or "_Bx" in name else rep

    return DecodeState(**{f.name: field(f.name) for f in dataclasses.fields(DecodeState)})


def sharded_generate_fn(mesh: Mesh, batch: int, cfg: ModelConfig, per_layer: bool = False):
    """``decode.generate_jit`` (the same function, re-jitted) with the output shardings of
    :func:`decode_state_sharding`."""
    from .decode import generate_jit

    fn = getattr(generate_jit, "__wrapped__", None)
    if fn is None:  # not a jax.jit wrapper any more: run it as it is
        return generate_jit
    return jax.jit(fn, static_argnames=("spec", "stream"), donate_argnames=("cache",),
                   out_shardings=decode_state_sharding(mesh, batch, cfg, per_layer))


def to_host(x) -> np.ndarray:
    """A global array on the host of every process (gathers non-addressable shards)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def shard_la_state(la_state, mesh: Mesh):
    """LA training state (``losses.LAState``: step, LA params, optimizer moments) replicated."""
    return jax.device_put(la_state, replicated(mesh))


def make_la_train_step_sharded(cfg: ModelConfig, optimizer, mesh: Mesh, *, loss_kind: str = "ce",
                               num_groups: int = 1, temperature: float = 1.0,
                               remat: str = "none"):
    """``losses.la_train_step`` jitted for ``mesh``: ``step(la_state, base_params, batch, rng)``.

    Explicit shardings: LA state replicated in and out (donated), base params as they are
    (by the rules) and batch split over ``('data', 'fsdp')`` (:func:`shard_batch`): their
    shardings are taken from the arguments; metrics replicated. Same maths as
    ``losses.make_la_train_step``.
    """
    from .losses import LOSS_KINDS, la_train_step

    if loss_kind not in LOSS_KINDS:
        raise ValueError(f"unknown LA loss kind {loss_kind!r}; expected one of {LOSS_KINDS}")
    step = functools.partial(la_train_step, cfg=cfg, optimizer=optimizer, loss_kind=loss_kind,
                             num_groups=num_groups, temperature=temperature, remat=remat)
    rep = replicated(mesh)
    return jax.jit(step, out_shardings=(rep, rep), donate_argnums=(0,))


# --------------------------------------------------------------------------- memory plan

GiB = 1024 ** 3
DEVICES = {  # name -> (memory bytes per device, description)
    "tpu-v4": (32 * GiB, "TPU v4 (32 GiB HBM)"),
    "tpu-v5e": (16 * GiB, "TPU v5e (16 GiB HBM)"),
    "h100": (80 * GiB, "H100 (80 GiB HBM3)"),
}
USABLE_FRACTION = 0.9  # leave room for XLA scratch, fragmentation, the runtime

LLAMA_7B = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                       ffn_dim=11008, max_position=4096, dtype="bfloat16",
                       param_dtype="bfloat16")
LLAMA2_70B = ModelConfig(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                         ffn_dim=28672, max_position=4096, dtype="bfloat16",
                         param_dtype="bfloat16")


@functools.lru_cache(maxsize=16)
def _abstract_params(cfg: ModelConfig):
    from .model import init_params

    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def memory_plan(cfg: ModelConfig, mesh_shape, batch: int, max_len: int, dtype="bfloat16",
                num_lookahead: int = 4, device: str | int = "tpu-v4", *, train_batch: int = 8,
                train_seq_len: int = 2048, num_groups: int = 1,
                remat: bool = False) -> dict[str, Any]:
    """Per-device memory of serving (params + KV cache) and of LA training, by the same rules
    the real arrays are sharded with.

    Args:
      mesh_shape: ``{'data','fsdp','tensor'}`` sizes (dict or ``"data=..,fsdp=..,tensor=.."``).
      batch, max_len: decoding batch rows and cache slots per row.
      dtype: params, activations and cache dtype. LA params and Adam moments are float32.
      device: a key of ``DEVICES`` or a memory size in bytes.
      train_batch, train_seq_len, num_groups: the LA training batch (paper: batch 8).
      remat: estimate activations with each layer rematerialised (``train.lookahead --remat
        layer``: ``nn.remat`` on the scanned block, saving only the layer inputs).

    Returns a dict of byte counts: ``params_total``, ``params_per_device`` (exact, from the
    partition rules), ``kv_per_token`` (all layers, K and V), ``kv_per_device``,
    ``serve_per_device``, ``la_state`` (LA params + grads + Adam m, v), ``train_activations``
    (an estimate, see below), ``train_per_device``, ``device_bytes``, ``usable_bytes`` and
    ``fits_serve`` / ``fits_train`` / ``fits`` (both).

    Activation estimate for the LA step: the gradient reaches the LA inputs through every
    layer, so the backward pass keeps, per layer and token, about ``10 D + 3 F`` values in
    ``dtype`` (norm inputs, q/k/v, attention output, residuals, MLP gate/up/product) plus the
    float32 attention probabilities ``H x T`` (no flash attention); with ``remat`` only the
    ``D`` layer inputs per layer plus one layer's full set. The head keeps float32 logits and
    their softmax for ``2 M L`` rows. Token dims split over ``data x fsdp`` (a device holds at
    least one row: sequences are not split), ``F``, heads and vocab over ``tensor``.
    """
    ms = parse_mesh(mesh_shape, None) if isinstance(mesh_shape, str) else {
        a: int(dict(mesh_shape).get(a, 1)) for a in AXES}
    if any(s < 1 for s in ms.values()):
        raise ValueError(f"memory_plan needs explicit mesh sizes, got {ms}")
    if isinstance(device, str):
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
        dev_bytes = DEVICES[device][0]
    else:
        dev_bytes = int(device)
    isz = jnp.dtype(dtype).itemsize
    cfg = cfg.replace(param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(dtype).name)
    abstract = _abstract_params(cfg)
    specs = param_specs(abstract, ms)
    params_total = params_dev = 0
    for leaf, spec in zip(jax.tree.leaves(abstract),
                          jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
        n = math.prod(leaf.shape) * isz
        split = math.prod(math.prod(ms[a] for a in _axes_tuple(ax)) for ax in spec)
        params_total += n
        params_dev += n // split
    kv_token = cache_bytes_per_token(cfg, dtype)
    cspec = cache_specs(cfg, ms, batch).k
    kv_split = math.prod(math.prod(ms[a] for a in _axes_tuple(ax)) for ax in cspec)
    kv_dev = kv_token * batch * max_len // kv_split

    L, D, F, H, N = num_lookahead, cfg.d_model, cfg.ffn_dim, cfg.n_heads, cfg.n_layers
    la_state = 4 * L * D * 4  # float32 params, grads, Adam m and v (replicated)
    T = train_seq_len + num_groups * L
    bshards = math.prod(ms[a] for a in BATCH_AXES)
    rows = -(-train_batch // bshards)  # rows per device (ceil)
    tp = ms["tensor"]
    layer_tok = 10 * D * isz + 3 * (-(-F // tp)) * isz + 4 * (-(-H // tp)) * T
    if remat:
        acts = rows * T * (N * D * isz + layer_tok)
    else:
        acts = rows * T * N * layer_tok
    acts += rows * 2 * num_groups * L * (-(-cfg.vocab_size // tp)) * 8
    serve = params_dev + kv_dev
    train = params_dev + la_state + acts
    usable = int(dev_bytes * USABLE_FRACTION)
    return {
        "mesh": dict(ms), "devices": math.prod(ms.values()),
        "params_total": params_total, "params_per_device": params_dev,
        "kv_per_token": kv_token, "kv_per_device": kv_dev,
        "serve_per_device": serve,
        "la_state": la_state, "train_activations": acts, "train_per_device": train,
        "remat": remat, "device_bytes": dev_bytes, "usable_bytes": usable,
        "fits_serve": serve <= usable, "fits_train": train <= usable,
        "fits": serve <= usable and train <= usable,
    }


def choose_mesh(cfg: ModelConfig, device: str, *, batch: int, max_len: int,
                dtype="bfloat16", num_lookahead: int = 4, max_devices: int = 512,
                need: str = "fits", **plan_kw) -> dict[str, int] | None:
    """The smallest mesh for which ``memory_plan(...)[need]`` holds (``'fits'``: serving and LA
    training; ``'fits_serve'``; ``'fits_train'``): 1, 2, 4, ... devices, tensor parallelism up
    to 8 (one host / one ICI ring) and the kv-head count, the rest ``fsdp``. None if none."""
    n = 1
    while n <= max_devices:
        t = 1
        while t * 2 <= min(n, 8) and cfg.n_kv_heads % (t * 2) == 0:
            t *= 2
        ms = {"data": 1, "fsdp": n // t, "tensor": t}
        if memory_plan(cfg, ms, batch, max_len, dtype, num_lookahead, device, **plan_kw)[need]:
            return ms
        n *= 2
    return None


def _gib(n: int) -> str:
    return f"{n / GiB:.1f}"


def memory_plan_table(models: Mapping[str, ModelConfig] | None = None,
                      devices: Sequence[str] = ("tpu-v4", "tpu-v5e", "h100"), *,
                      batch: int = 8, max_len: int = 2048, dtype="bfloat16",
                      num_lookahead: int = 4, train_batch: int = 8,
                      train_seq_len: int = 2048) -> str:
    """Markdown tables of :func:`memory_plan` for each model on each device.

    Serving: the smallest mesh that holds params + KV cache. LA training: the smallest mesh for
    the model as it is (no rematerialisation) and, since that is activation-bound, the smallest
    with per-layer remat.
    """
    models = models or {"LLaMA-7B": LLAMA_7B, "LLaMA-2-70B": LLAMA2_70B}
    common = {"batch": batch, "max_len": max_len, "dtype": dtype,
              "num_lookahead": num_lookahead, "train_batch": train_batch,
              "train_seq_len": train_seq_len}
    mesh_s = lambda m: "none fits" if m is None else f"({m['data']}, {m['fsdp']}, {m['tensor']})"
    nd = lambda m: "-" if m is None else str(math.prod(m.values()))
    dt = jnp.dtype(dtype).name
    lines = [
        (f"Serving: batch {batch} x {max_len} cache slots, {dt} weights and KV cache. "
        f"LA training: batch {train_batch} x {train_seq_len} tokens, L = {num_lookahead}, "
        f"{dt} base model, float32 LA params and Adam moments. "
        f"{100 * USABLE_FRACTION:.0f}% of device memory counted as usable. Meshes are "
        f"(data, fsdp, tensor); sizes in GiB per device unless stated."),
        "",
        ("| model | device | params (total) | KV / token | serving mesh | devices | params/dev "
         "| KV/dev | serve/dev | LA state | training mesh (no remat) | devices | act/dev "
         "| train/dev | training mesh (remat) | devices | act/dev | train/dev |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cfg in models.items():
        for dev in devices:
            serve_m = choose_mesh(cfg, dev, need="fits_serve", **common)
            train_m = choose_mesh(cfg, dev, need="fits_train", **common)
            remat_m = choose_mesh(cfg, dev, need="fits_train", remat=True, **common)
            any_m = serve_m or train_m or remat_m or {"data": 1, "fsdp": 1, "tensor": 1}

            def plan(m, cfg=cfg, dev=dev, **k):
                return memory_plan(cfg, m, batch, max_len, dtype, num_lookahead, dev,
                                   train_batch=train_batch, train_seq_len=train_seq_len, **k)

            base = plan(any_m)
            cells = [name, DEVICES[dev][1], f"{base['params_total'] / 1e9:.1f} GB",
                     f"{base['kv_per_token'] // 1024} KiB", mesh_s(serve_m), nd(serve_m)]
            if serve_m is None:
                cells += ["-"] * 3
            else:
                r = plan(serve_m)
                cells += [_gib(r["params_per_device"]), _gib(r["kv_per_device"]),
                          _gib(r["serve_per_device"])]
            cells.append(f"{base['la_state'] // 1024} KiB")
            for m, remat in ((train_m, False), (remat_m, True)):
                cells += [mesh_s(m), nd(m)]
                if m is None:
                    cells += ["-", "-"]
                else:
                    r = plan(m, remat=remat)
                    cells += [_gib(r["train_activations"]), _gib(r["train_per_device"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "AXES",
    "BATCH_AXES",
    "DEVICES",
    "LLAMA2_70B",
    "LLAMA_7B",
    "PARAM_RULES",
    "abstract_sharded",
    "add_mesh_arg",
    "batch_divisor",
    "batch_sharding",
    "batch_spec",
    "cache_sharding",
    "cache_specs",
    "choose_mesh",
    "fit_spec",
    "place_decode_inputs", "sharded_generate_fn", "to_host", "load_model_for_args",
    "init_cache_sharded",
    "init_params_sharded",
    "load_hf_sharded",
    "make_la_train_step_sharded",
    "make_mesh",
    "maybe_initialize_distributed",
    "memory_plan",
    "memory_plan_table",
    "mesh_from_args",
    "param_shardings",
    "param_spec",
    "param_specs",
    "parse_mesh",
    "put_sharded",
    "replicated",
    "shard_batch",
    "shard_la_state",
    "shard_params",
]

if __name__ == "__main__":  # python -m pass_jax.sharding: print the memory plan (docs/scaling.md)
    print(memory_plan_table())
