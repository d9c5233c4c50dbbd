"""The KV cache: an explicit, statically shaped pytree passed into and returned from the model.

Layout: ``k``/``v`` are ``[layers, batch, kv_heads, max_len, head_dim]`` (or a tuple of per-layer
``[batch, kv_heads, max_len, head_dim]``, see ``model.unstack_layers``) and ``lengths[batch]``
counts the committed tokens of each row. Slots sit next to head_dim so that attention's
score and value products read each layer's cache as a plain batched matmul with no transposed
copy. A forward call writes its T tokens at slots ``lengths[b] .. lengths[b] + T - 1`` and
attends to slots ``< lengths[b]`` plus in-call tokens allowed by its mask. Committing or rolling
back tokens is a change of ``lengths``; entries at or past ``lengths`` are garbage and get
overwritten. A draft tree's accepted path is not contiguous: ``move`` first compacts it to the
slots right after ``lengths``.

The cache has its own dtype (``init_cache(..., dtype=)``, ``generate(..., cache_dtype=)``), by
default the compute dtype ``cfg.dtype``: a bfloat16 cache under float32 compute halves its
memory. The model rounds new keys/values to the cache dtype once, when it computes them, and
reads them back in the compute dtype (``model.Block``).

Shape letters: see ``pass_jax/__init__.py`` (here I layers, B batch, K kv heads, S slots, A head
dim, J draft depth: ``move`` copies an accepted path of J drafts).
"""

from __future__ import annotations

from functools import lru_cache, partial

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .config import ModelConfig
from .sharding import BATCH_AXES, fit_spec, mesh_shape


@flax.struct.dataclass
class KVCache:
    """k/v: one stacked ``[I, B, K, S, A]`` array (stacked params), or a tuple of I per-layer
    ``[B, K, S, A]`` arrays (``model.unstack_layers`` params)."""

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    lengths: jax.Array  # [batch] int32, committed tokens per row

    @property
    def max_len(self) -> int:
        return jax.tree.leaves(self.k)[0].shape[-2]

    def advance(self, n_B: jax.Array) -> KVCache:
        """Commit ``n_B[b]`` more of the tokens written by the last call, per row."""
        return self.replace(lengths=self.lengths + n_B.astype(jnp.int32))

    def move(self, src_BxJ: jax.Array, dst_BxJ: jax.Array) -> KVCache:
        """Copy every layer's K/V at slots ``src[b, j]`` to ``dst[b, j]`` (all read before any
        is written). A destination past the end is dropped (nothing is written); a source past
        the end is clamped by the gather to the last slot."""
        B, J = src_BxJ.shape
        b_BxJ = jnp.broadcast_to(jnp.arange(B)[:, None], (B, J))

        def move(c):
            return c.at[..., b_BxJ, :, dst_BxJ, :].set(c[..., b_BxJ, :, src_BxJ, :], mode="drop")

        return self.replace(k=jax.tree.map(move, self.k), v=jax.tree.map(move, self.v))

    def grow(self, max_len: int) -> KVCache:
        """The cache with ``max_len`` slots: every layer's K/V padded with empty slots past
        ``max_len`` (never read: attention stops at each row's length)."""

        def grow(c):
            return jnp.pad(c, [(0, 0)] * (c.ndim - 2) + [(0, max_len - c.shape[-2]), (0, 0)])

        return self.replace(k=jax.tree.map(grow, self.k), v=jax.tree.map(grow, self.v))


def init_cache(
    cfg: ModelConfig,
    batch: int,
    max_len: int,
    dtype=None,
    per_layer: bool = False,
    mesh: Mesh | None = None,
) -> KVCache:
    """An empty cache (all lengths 0) for ``batch`` rows of ``max_len`` slots, of ``dtype``
    (:func:`resolve_cache_dtype`: default the compute dtype); ``per_layer``: a tuple of per-layer
    arrays (for ``model.unstack_layers`` params). With a ``mesh`` it is created directly in its
    shards (:func:`cache_sharding`)."""
    if max_len < 1:
        raise ValueError(f"cache max_len must be >= 1, got {max_len}")
    dtype = resolve_cache_dtype(cfg, dtype)
    return _empty_program(cfg, batch, max_len, dtype, per_layer, mesh)()


def _empty(cfg: ModelConfig, batch: int, max_len: int, dtype, per_layer: bool) -> KVCache:
    shape = (batch, cfg.n_kv_heads, max_len, cfg.hd)
    if per_layer:
        kv = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
    else:
        kv = lambda: jnp.zeros((cfg.n_layers, *shape), dtype)
    return KVCache(k=kv(), v=kv(), lengths=jnp.zeros((batch,), jnp.int32))


@lru_cache(maxsize=32)
def _empty_program(
    cfg: ModelConfig, batch: int, max_len: int, dtype, per_layer: bool, mesh: Mesh | None
):
    """``_empty`` jitted, on a mesh into its shards: one dispatch rather than one per array
    (SmolLM2's per-layer cache: 0.7 ms against 4.4 ms on the development CPU, every generate
    call), and one compilation per cache shape and mesh (not one per generate call)."""
    shardings = (
        {} if mesh is None else {"out_shardings": cache_sharding(cfg, mesh, batch, per_layer)}
    )
    return jax.jit(partial(_empty, cfg, batch, max_len, dtype, per_layer), **shardings)


def cache_specs(cfg: ModelConfig, mesh, batch: int, per_layer: bool = False) -> KVCache:
    """``KVCache`` of ``PartitionSpec``: k/v ``[I, B, K, S, A]`` (or I per-layer ``[B, K, S, A]``)
    over batch and kv heads; ``mesh``: a ``Mesh`` or its axis sizes."""
    ms = mesh_shape(mesh)
    shape = (cfg.n_layers, batch, cfg.n_kv_heads, 1, cfg.hd)
    kv = fit_spec(shape, (None, BATCH_AXES, "tensor", None, None), ms, "kv cache")
    if per_layer:
        kv = (P(*kv[1:]),) * cfg.n_layers
    return KVCache(k=kv, v=kv, lengths=fit_spec((batch,), (BATCH_AXES,), ms, "cache lengths"))


def cache_sharding(cfg: ModelConfig, mesh: Mesh, batch: int, per_layer: bool = False) -> KVCache:
    """``KVCache`` of ``NamedSharding`` for a cache of ``batch`` rows on ``mesh``."""
    specs = cache_specs(cfg, mesh, batch, per_layer)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def resolve_cache_dtype(cfg: ModelConfig, dtype=None) -> jnp.dtype:
    """The dtype of a KV cache: ``dtype`` (a floating dtype or its name: ``"bfloat16"``), or
    the compute dtype ``cfg.dtype`` when it is None or ``"auto"``. Raises ValueError for
    anything else."""
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return jnp.dtype(cfg.dtype)
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"cache dtype must be a floating dtype (float32, bfloat16, ...) or None / 'auto' "
            f"(the compute dtype), got {dtype!r}"
        )
    return dt


def cache_bytes_per_token(cfg: ModelConfig, dtype=None) -> int:
    """Bytes of K and V one token occupies across all layers, in a cache of ``dtype``
    (:func:`resolve_cache_dtype`: default the compute dtype)."""
    itemsize = resolve_cache_dtype(cfg, dtype).itemsize
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.hd * itemsize
