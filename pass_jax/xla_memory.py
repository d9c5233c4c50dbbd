"""What XLA itself sets aside per device for the LA train step and the decoding loop.

``la_train_memory`` and ``decode_memory`` lower and compile the real programs
(``losses.make_la_train_step``, ``decode.sharded_generate_jit``) for a mesh, with abstract inputs:
``jax.ShapeDtypeStruct`` leaves carrying the ``NamedSharding`` of the partition rules. Nothing is
allocated at model size, so a 70B model compiles on a small host. The figures are
``compiled.memory_analysis()``'s, per device (``XlaMemory``).

``compile_devices`` gives the devices to compile for: simulated CPU devices
(``--xla_force_host_platform_device_count``), or a TPU slice described by its topology
(``v5e:4x4``), compiled ahead of time on a host without a TPU; that needs the ``libtpu`` package
(the one ``jax[tpu]`` pins). ``memory_plan`` sets these figures beside its analytic ones
(``python -m pass_jax.memory_plan --xla TARGET``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from importlib import metadata

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import Mesh

from .cache import cache_sharding, init_cache
from .checkpoint import abstract_like
from .config import ModelConfig, SamplerConfig
from .decode import DecodeSpec, decode_state_sharding, eos_array, sharded_generate_jit
from .layout import make_schedule
from .losses import init_la_state, make_la_train_step, paper_optimizer
from .model import abstract_params
from .sharding import batch_sharding, param_shardings, replicated

# TPU chips whose slices compile without a TPU (one JAX device per chip) -> topology prefix and
# dims. TPU v4 is left out: its topologies compile for one device per TensorCore (two per chip),
# not the one device per chip (megacore) that JAX uses on a v4.
TPU_TOPOLOGIES = {"tpu-v5e": ("v5e", 2), "tpu-v5p": ("v5p", 3)}
TARGETS = ("cpu", *TPU_TOPOLOGIES)


@dataclass(frozen=True)
class XlaMemory:
    """Per-device bytes of one compiled program, from ``compiled.memory_analysis()``."""

    argument: int  # the inputs as XLA lays them out (params, cache or LA state, batch, ...)
    output: int
    alias: int  # outputs written into a donated input's buffer (counted in both above)
    temp: int  # XLA's scratch at its peak: activations, copies, collectives' buffers
    code: int  # generated code (0 on the CPU backend, which does not report it)
    compile_s: float  # seconds to lower and compile

    @property
    def total(self) -> int:
        """``argument + output - alias + temp``: what a device must hold to run the program
        (code aside; an upper bound, as arguments and outputs count whole)."""
        return self.argument + self.output - self.alias + self.temp


def target_description(target: str) -> str:
    """How ``target`` is compiled for, in words, with the versions (for tables)."""
    if target == "cpu":
        return f"simulated CPU devices, XLA:CPU of jax {jax.__version__}"
    try:
        libtpu = f"libtpu {metadata.version('libtpu')}"
    except metadata.PackageNotFoundError:
        libtpu = "libtpu (version unknown)"
    prefix = TPU_TOPOLOGIES[target][0]
    return f"{prefix} topologies, XLA:TPU ahead of time, jax {jax.__version__}, {libtpu}"


def tpu_topology(target: str, n: int) -> str:
    """The topology name of an ``n``-chip slice of ``target`` (``tpu-v5e``: ``v5e:4x4`` for
    16; ``tpu-v5p``: ``v5p:2x2x4``, ``v5p:2x2x1`` for 4), dims powers of two, smallest first
    but a 1 last, at least 2x2."""
    if target not in TPU_TOPOLOGIES:
        raise ValueError(f"unknown TPU target {target!r}; known: {', '.join(TPU_TOPOLOGIES)}")
    if n < 1 or n & (n - 1):
        raise ValueError(f"a TPU slice of {n} chips: give a power of two")
    prefix, ndim = TPU_TOPOLOGIES[target]
    dims = [1] * ndim
    for i in range(max(n, 4).bit_length() - 1):  # double the dims in turn: 2x2x1, 2x2x2, ...
        dims[i % ndim] *= 2
    return f"{prefix}:{'x'.join(map(str, sorted(dims, key=lambda d: (d == 1, d))))}"  # 2x2x1


def compile_devices(target: str, n: int) -> list[jax.Device]:
    """``n`` devices to compile for. ``cpu``: simulated host devices, of which the process must
    have at least ``n`` (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, or
    ``jax.config.update('jax_num_cpu_devices', N)`` before JAX's first use); ``tpu-v5e``,
    ``tpu-v5p``: the chips of a slice (``tpu_topology``; fewer than 4: the first ``n`` of a 2x2
    one), no TPU needed but the ``libtpu`` package."""
    if target == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < n:
            raise ValueError(
                f"compiling for {n} simulated CPU devices, this process has {len(devices)}: "
                f"start it with XLA_FLAGS=--xla_force_host_platform_device_count={n}"
            )
        return devices[:n]
    name = tpu_topology(target, n)
    try:
        topology = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as e:  # without libtpu JAX's error names neither it nor the fix
        raise ValueError(
            f"no {name} topology to compile for (it needs the libtpu package: pip install "
            f"'jax[tpu]=={jax.__version__}'; no TPU is needed): {str(e).splitlines()[0]}"
        ) from e
    return list(topology.devices)[:n]


def _row_input(mesh: Mesh, shape, dtype) -> jax.ShapeDtypeStruct:
    """An abstract ``[B, ...]`` input split over the batch axes."""
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=batch_sharding(mesh, shape))


def _memory(jitted, *args) -> XlaMemory:
    t0 = time.perf_counter()
    stats = jitted.lower(*args).compile().memory_analysis()
    return XlaMemory(
        argument=stats.argument_size_in_bytes,
        output=stats.output_size_in_bytes,
        alias=stats.alias_size_in_bytes,
        temp=stats.temp_size_in_bytes,
        code=stats.generated_code_size_in_bytes,
        compile_s=time.perf_counter() - t0,
    )


def la_train_memory(
    cfg: ModelConfig,
    mesh: Mesh,
    *,
    batch: int = 8,
    seq_len: int = 2048,
    num_lookahead: int = 4,
    num_groups: int = 1,
    remat: str = "layer",
) -> XlaMemory:
    """XLA's per-device memory of one LA train step (``losses.make_la_train_step(...,
    mesh=mesh)``, CE loss, the paper's AdamW): base params ``cfg.param_dtype`` by the partition
    rules, a float32 LA state ``[L, D]`` replicated and donated, tokens ``[B, X]`` (``batch`` x
    ``seq_len``) split over the batch axes; ``remat``: ``model.REMAT_POLICIES``."""
    rep = replicated(mesh)
    optimizer = paper_optimizer()
    la_LxD = jax.ShapeDtypeStruct((num_lookahead, cfg.d_model), jnp.float32)
    la_state = jax.eval_shape(lambda la: init_la_state(la, optimizer), la_LxD)
    params = abstract_params(cfg)
    step = make_la_train_step(cfg, optimizer, "ce", num_groups, remat=remat, mesh=mesh)
    return _memory(
        step,
        abstract_like(la_state, rep),
        abstract_like(params, param_shardings(params, mesh)),
        {"tokens": _row_input(mesh, (batch, seq_len), jnp.int32)},
        abstract_like(jax.eval_shape(jax.random.PRNGKey, 0), rep),
    )


def decode_memory(
    cfg: ModelConfig,
    mesh: Mesh,
    *,
    batch: int = 8,
    max_len: int = 2048,
    prompt_len: int = 128,
    num_lookahead: int = 4,
    method: str = "pass-fused",
) -> XlaMemory:
    """XLA's per-device memory of one ``generate`` program on ``mesh`` (``decode.
    sharded_generate_jit``: prefill, then the ``while_loop`` of ``method``'s calls, greedy):
    stacked params by the partition rules, a donated KV cache of ``batch`` rows x ``max_len``
    slots split over rows and kv heads (``cache.cache_sharding``), prompts ``[B, P]``
    (``prompt_len``) split over rows, ``la_LxD`` replicated; the loop runs until the cache is
    full (``max_new_tokens`` = ``max_len - prompt_len`` - one step's tokens)."""
    schedule = make_schedule(method, 0 if method == "ar" else num_lookahead)
    max_new_tokens = max_len - prompt_len - schedule.step_tokens
    if max_new_tokens < 1:
        raise ValueError(
            f"a cache of {max_len} slots holds no new token after a {prompt_len}-token prompt "
            f"and one {method} step ({schedule.step_tokens} tokens)"
        )
    rep = replicated(mesh)
    sampler = SamplerConfig()
    spec = DecodeSpec(
        cfg,
        schedule,
        sampler,
        max_new_tokens,
        state_sharding=decode_state_sharding(mesh, batch, cfg),
    )
    params = abstract_params(cfg)
    cache = jax.eval_shape(functools.partial(init_cache, cfg, batch, max_len))
    la_LxD = jax.ShapeDtypeStruct((schedule.num_lookahead, cfg.d_model), cfg.param_dtype)
    eos_E = jax.ShapeDtypeStruct(eos_array(cfg.eos_token_ids).shape, jnp.int32)
    return _memory(
        sharded_generate_jit(mesh, batch, cfg),
        spec,
        abstract_like(params, param_shardings(params, mesh)),
        abstract_like(la_LxD, rep),
        _row_input(mesh, (batch, prompt_len), jnp.int32),  # prompt_BxP
        _row_input(mesh, (batch,), jnp.int32),  # prompt_len_B
        _row_input(mesh, (batch,), jnp.bool_),  # active_B
        abstract_like(eos_E, rep),
        abstract_like(cache, cache_sharding(cfg, mesh, batch)),
        abstract_like(jax.eval_shape(jax.random.PRNGKey, 0), rep),
        None,  # stream
    )
