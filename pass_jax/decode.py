"""Generation: autoregressive and PaSS decoding as one jitted ``lax.while_loop``.

Every method is a schedule of layout calls (see ``layout.py``) run by one generic function,
``layout_call``: feed the layout's tokens (root y, draft tree, LA embeddings), verify the tree
with (multi-candidate) speculative sampling, commit root + accepted path (moved next to the cache
when it is not contiguous, then a change of ``cache.lengths``), emit the accepted drafts and the
correction/bonus token, and draw the next drafts from the LA group that hangs under the last
accepted node. Autoregressive decoding is the layout [y]; the paper's PaSS is a drafting call
then a validation call; fused PaSS is one call per iteration; a draft tree is a fused call whose
drafts branch (several draws per position).

Emitted tokens go to ``out_BxN`` (N = ``max_new_tokens``); EOS (inside accepted drafts too) ends
a row and ``max_new_tokens`` is exact. Finished rows are frozen while other rows continue.

Shape letters: see ``pass_jax/__init__.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache, partial, wraps
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import Mesh

from . import compiled
from .cache import KVCache, cache_sharding, init_cache, resolve_cache_dtype
from .config import ModelConfig, SamplerConfig
from .context import context_drafts
from .layout import Layout, Schedule, make_schedule, method_lookahead
from .model import embed_tokens, forward, is_stacked, logits_from_hidden
from .sampling import draw_without_replacement, sample_logits, support_size, verify_tree, warp_probs
from .sharding import batch_divisor, batch_sharding, replicated, shard_batch, to_host

PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class DecodeSpec:
    """Everything static about a generation: one compilation per spec and input shapes."""

    cfg: ModelConfig
    schedule: Schedule
    sampler: SamplerConfig
    max_new_tokens: int
    precision: str | None = None  # matmul precision inside the step (None: JAX's default)
    # a DecodeState of shardings pinned inside the loop (``decode_state_sharding``)
    state_sharding: Any = None


PRECISIONS = ("auto", "default", "highest")


def decode_precision(
    cfg: ModelConfig, sampler: SamplerConfig, precision: str = "auto"
) -> str | None:
    """The matmul precision of a decode step (``DecodeSpec.precision``).

    ``auto``: ``highest`` for greedy decoding of a float32 model, else JAX's default. Calls over
    different token counts round differently; at TF32 (the GPU default for float32 matmuls) a
    near-tie between two tokens can then flip, and greedy PaSS would differ from greedy
    autoregressive decoding. On a CPU both are full float32, so the choice costs nothing there.
    ``default``: JAX's default precision; ``highest``: always full precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "highest" if sampler.greedy and cfg.dtype == "float32" else None
    return None if precision == "default" else precision


def _at_spec_precision(fn):
    """Runs ``fn(spec, ...)`` (traced) under ``spec.precision``'s default matmul precision."""

    @wraps(fn)
    def wrapped(spec: DecodeSpec, *args, **kwargs):
        with (
            contextlib.nullcontext()
            if spec.precision is None
            else jax.default_matmul_precision(spec.precision)
        ):
            return fn(spec, *args, **kwargs)

    return wrapped


@flax.struct.dataclass
class DecodeState:
    """Loop state. ``y`` is the newest token (emitted, not yet in the cache)."""

    cache: KVCache
    y_B: jax.Array  # int32
    drafts_BxLxW: jax.Array  # int32, per position j after y: W ordered draws from q_j
    q_BxLxV: jax.Array  # float32, warped draft distributions they were drawn from
    out_BxN: jax.Array  # int32 emitted tokens, N = max_new_tokens
    n_B: jax.Array  # int32 emitted count
    done_B: jax.Array  # bool
    rng: jax.Array
    eos_E: jax.Array  # int32 ids that end a row (-1 pads)
    calls_B: jax.Array  # int32 forward calls made while the row was active
    verify_calls_B: jax.Array  # int32 calls that verified drafts
    accepted_BxJxW: jax.Array  # int32 times the draw of rank r at depth j was accepted
    accepted_ctx_BxJ: jax.Array  # int32 times a context draft at depth j was accepted
    hist_BxS: jax.Array  # int32 the prompt and the emitted tokens, by position (cache slot)


def _emit(
    spec: DecodeSpec,
    state: DecodeState,
    new_BxO: jax.Array,
    count_B: jax.Array,
    active_B: jax.Array,
):
    """Append ``new[b, :count[b]]`` to each active row, truncating at EOS and max_new_tokens."""
    B, O = new_BxO.shape
    N = spec.max_new_tokens
    i_O = jnp.arange(O)
    valid_BxO = (i_O[None, :] < count_B[:, None]) & active_B[:, None]
    room_BxO = state.n_B[:, None] + i_O[None, :] < N
    eos_BxO = valid_BxO & room_BxO & jnp.isin(new_BxO, state.eos_E)
    before_eos_BxO = jnp.cumsum(eos_BxO, axis=1) - eos_BxO == 0  # up to and including the EOS
    keep_BxO = valid_BxO & room_BxO & before_eos_BxO
    slot_BxO = jnp.where(keep_BxO, state.n_B[:, None] + i_O[None, :], N)  # N is dropped
    out = state.out_BxN.at[jnp.arange(B)[:, None], slot_BxO].set(new_BxO, mode="drop")
    n_B = state.n_B + keep_BxO.sum(1).astype(jnp.int32)
    done_B = state.done_B | eos_BxO.any(1) | (n_B >= N)
    return state.replace(out_BxN=out, n_B=n_B, done_B=done_B)


@_at_spec_precision
def layout_call(spec: DecodeSpec, layout: Layout, params, la_LxD, state: DecodeState):
    """One forward call of ``layout``: verify its draft tree, commit the accepted path, emit, and
    draw the next drafts from the LA group under the last accepted node."""
    cfg, sampler = spec.cfg, spec.sampler
    B = state.y_B.shape[0]
    C, J = layout.num_tree, layout.draft_depth
    rng, rng_acc, rng_draft = jax.random.split(state.rng, 3)
    active_B = ~state.done_B

    draft_n, draft_j, draft_r = layout.draft_slots
    tree_BxC = jnp.zeros((B, C), jnp.int32).at[:, 0].set(state.y_B)
    tree_BxC = tree_BxC.at[:, draft_n].set(state.drafts_BxLxW[:, draft_j, draft_r])
    lengths_B = state.cache.lengths  # y's position
    tree_BxC, valid_BxC = context_drafts(layout, state.hist_BxS, lengths_B + 1, tree_BxC)
    tokens_BxT = jnp.concatenate([tree_BxC, jnp.zeros((B, layout.T - C), jnp.int32)], axis=1)
    x_BxTxD = embed_tokens(cfg, params, tokens_BxT)
    if layout.num_lookahead:
        la_TxD = jnp.asarray(la_LxD, x_BxTxD.dtype)[layout.la_index]
        x_BxTxD = jnp.where(layout.is_la[None, :, None], la_TxD[None], x_BxTxD)
    positions_BxT = state.cache.lengths[:, None] + layout.depth[None, :]
    h_BxTxD, cache = forward(
        cfg,
        params,
        tokens_BxT,
        positions_BxT,
        state.cache,
        layout.mask,
        x_BxTxD,
        return_hidden=True,
    )

    # Verify: the outputs at the tree nodes are the target distributions after them.
    p_BxCxV = warp_probs(logits_from_hidden(cfg, params, h_BxTxD[:, :C]), sampler)
    support = support_size(sampler, cfg.vocab_size)
    node_B, ranks_BxJ, next_B = verify_tree(
        rng_acc,
        p_BxCxV,
        layout.children,
        layout.draw,
        tree_BxC,
        valid_BxC,
        state.drafts_BxLxW,
        state.q_BxLxV,
        sampler.greedy,
        support,
    )
    n_acc_B = (ranks_BxJ >= 0).sum(1).astype(jnp.int32)

    # Commit root + accepted path (moved to the slots after the cache first when it is not
    # there already); emit its drafts then the correction/bonus token.
    path_BxJ = jnp.asarray(layout.paths)[node_B][:, 1:]
    if not layout.is_chain:
        lengths_Bx1 = cache.lengths[:, None]
        cache = cache.move(lengths_Bx1 + path_BxJ, lengths_Bx1 + jnp.arange(1, J + 1)[None])
    cache = cache.advance(jnp.where(active_B, n_acc_B + 1, 0))
    new_BxO = jnp.concatenate(
        [jnp.take_along_axis(tree_BxC, path_BxJ, axis=1), next_B[:, None]], axis=1
    )  # O = J + 1
    new_BxO = jnp.where(jnp.arange(J + 1)[None, :] == n_acc_B[:, None], next_B[:, None], new_BxO)
    state = _emit(spec, state, new_BxO, n_acc_B + 1, active_B)
    slot_BxO = lengths_B[:, None] + 1 + jnp.arange(J + 1)[None]
    keep_BxO = (jnp.arange(J + 1)[None] <= n_acc_B[:, None]) & active_B[:, None]
    hist_BxS = state.hist_BxS.at[
        jnp.arange(B)[:, None], jnp.where(keep_BxO, slot_BxO, state.hist_BxS.shape[1])
    ].set(new_BxO, mode="drop")

    drafts_BxLxW, q_BxLxV = state.drafts_BxLxW, state.q_BxLxV
    if layout.num_lookahead:  # next drafts from the group under the last accepted node
        nodes_BxL = jnp.asarray(layout.groups)[node_B]
        h_BxLxD = jnp.take_along_axis(h_BxTxD, nodes_BxL[..., None], axis=1)
        logits_BxLxV = logits_from_hidden(cfg, params, h_BxLxD)
        q_BxLxV = warp_probs(logits_BxLxV, sampler)
        W = drafts_BxLxW.shape[2]
        if sampler.greedy:
            drafts_BxLxW = jax.lax.top_k(logits_BxLxV, W)[1].astype(jnp.int32)
        else:
            drafts_BxLxW = draw_without_replacement(rng_draft, q_BxLxV, W, support)

    keep = lambda new, old: jnp.where(active_B.reshape((B,) + (1,) * (new.ndim - 1)), new, old)
    acc_BxJxW, acc_ctx_BxJ = state.accepted_BxJxW, state.accepted_ctx_BxJ
    if J:
        draw_BxJ = jnp.asarray(layout.draw)[path_BxJ]  # -1: a context draft
        ok_BxJ = (ranks_BxJ >= 0) & active_B[:, None]
        hit_BxJxW = ok_BxJ[..., None] & (draw_BxJ[..., None] == jnp.arange(acc_BxJxW.shape[2]))
        acc_BxJxW = acc_BxJxW.at[:, :J].add(hit_BxJxW.astype(jnp.int32))
        acc_ctx_BxJ = acc_ctx_BxJ.at[:, :J].add((ok_BxJ & (draw_BxJ < 0)).astype(jnp.int32))
    return state.replace(
        cache=cache,
        rng=rng,
        hist_BxS=hist_BxS,
        y_B=keep(next_B, state.y_B),
        drafts_BxLxW=keep(drafts_BxLxW, state.drafts_BxLxW),
        q_BxLxV=keep(q_BxLxV, state.q_BxLxV),
        calls_B=state.calls_B + active_B,
        verify_calls_B=state.verify_calls_B + (active_B if J else 0),
        accepted_BxJxW=acc_BxJxW,
        accepted_ctx_BxJ=acc_ctx_BxJ,
    )


def pass_step(spec: DecodeSpec, params, la_LxD, state: DecodeState) -> DecodeState:
    """One loop iteration: the schedule's calls in order (paper: draft + verify; fused: one)."""
    for layout in spec.schedule.step:
        state = layout_call(spec, layout, params, la_LxD, state)
    return state


@_at_spec_precision
def prefill(
    spec: DecodeSpec, params, prompt_BxP, prompt_len_B, active_B, eos_E, cache: KVCache, rng
) -> DecodeState:
    """Feed the right-padded prompts (a causal call) and draw the first new token."""
    cfg = spec.cfg
    B, P = prompt_BxP.shape
    L, W, J = spec.schedule.num_lookahead, spec.schedule.width, spec.schedule.depth
    positions_BxP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
    h_BxPxD, cache = forward(
        cfg, params, prompt_BxP, positions_BxP, cache, None, return_hidden=True
    )
    h_last_Bx1xD = jnp.take_along_axis(h_BxPxD, (prompt_len_B - 1)[:, None, None], axis=1)
    rng, rng_y = jax.random.split(rng)
    y_B = sample_logits(rng_y, logits_from_hidden(cfg, params, h_last_Bx1xD)[:, 0], spec.sampler)
    cache = cache.replace(lengths=prompt_len_B.astype(jnp.int32))
    hist_BxS = jnp.zeros((B, cache.max_len), jnp.int32).at[:, :P].set(prompt_BxP)
    hist_BxS = hist_BxS.at[jnp.arange(B), prompt_len_B].set(y_B, mode="drop")
    zeros = lambda *s, dt=jnp.int32: jnp.zeros(s, dt)
    state = DecodeState(
        cache=cache,
        y_B=y_B,
        drafts_BxLxW=zeros(B, L, W),
        q_BxLxV=zeros(B, L, cfg.vocab_size, dt=jnp.float32),
        out_BxN=zeros(B, spec.max_new_tokens),
        n_B=zeros(B),
        done_B=~active_B,
        rng=rng,
        eos_E=jnp.asarray(eos_E, jnp.int32),
        calls_B=active_B.astype(jnp.int32),
        verify_calls_B=zeros(B),
        accepted_BxJxW=zeros(B, J, W),
        accepted_ctx_BxJ=zeros(B, J),
        hist_BxS=hist_BxS,
    )
    return _emit(spec, state, y_B[:, None], jnp.ones((B,), jnp.int32), active_B)


# Stream callables of the generations running now, by id. The compiled program receives the id
# as an argument and calls ``_stream_host`` with it, so a new callable (a lambda per request)
# runs the program already compiled for streaming rather than compiling another one.
_STREAMS: dict[int, Callable] = {}
_STREAM_IDS = itertools.count()


def _stream_host(stream_id, out_BxN, n_B):
    _STREAMS[int(stream_id)](np.asarray(out_BxN), np.asarray(n_B))


def _stream(stream_id, state: DecodeState) -> None:
    """Hand the tokens so far to the host's stream callable ``stream_id`` (in order)."""
    io_callback(_stream_host, None, stream_id, state.out_BxN, state.n_B, ordered=True)


def decode_loop(
    spec: DecodeSpec,
    params,
    la_LxD,
    state: DecodeState,
    stop_B=None,
    stream_id=None,
    bootstrap: bool = True,
) -> DecodeState:
    """Bootstrap calls (unless ``bootstrap`` is False), then ``pass_step`` in a
    ``lax.while_loop`` until every row is done (EOS or ``max_new_tokens``) or has ``stop_B``
    tokens, or the cache cannot take another call; ``stream_id`` (an int32 scalar, or None):
    the stream callable (``_STREAMS``) given the tokens after every step."""
    for layout in spec.schedule.bootstrap if bootstrap else ():
        state = layout_call(spec, layout, params, la_LxD, state)
    need = spec.schedule.step_tokens

    def cond(s: DecodeState):
        fits = jnp.max(jnp.where(s.done_B, 0, s.cache.lengths)) + need <= s.cache.max_len
        going_B = ~s.done_B if stop_B is None else ~s.done_B & (s.n_B < stop_B)
        return jnp.any(going_B) & fits

    def body(s: DecodeState):
        if spec.state_sharding is not None:  # the cache stays split as it came in
            s = jax.lax.with_sharding_constraint(s, spec.state_sharding)
        s = pass_step(spec, params, la_LxD, s)
        if spec.state_sharding is not None:
            s = jax.lax.with_sharding_constraint(s, spec.state_sharding)
        if stream_id is not None:
            _stream(stream_id, s)
        return s

    if stream_id is not None:
        _stream(stream_id, state)
    return jax.lax.while_loop(cond, body, state)


def _generate(
    spec: DecodeSpec,
    params,
    la_LxD,
    prompt_BxP,
    prompt_len_B,
    active_B,
    eos_E,
    cache: KVCache,
    rng,
    stream_id=None,
) -> DecodeState:
    """Prefill, then ``decode_loop`` until every row is done or the cache is full (streaming
    to ``stream_id``'s callable when it is given: one program for every callable)."""
    state = prefill(spec, params, prompt_BxP, prompt_len_B, active_B, eos_E, cache, rng)
    return decode_loop(spec, params, la_LxD, state, None, stream_id)


_GENERATE_JIT = {"static_argnames": ("spec",), "donate_argnames": ("cache",)}
generate_jit = jax.jit(_generate, **_GENERATE_JIT)


# --------------------------------------------------------------------------- on a mesh


@lru_cache(maxsize=32)
def decode_state_sharding(
    mesh: Mesh, batch: int, cfg: ModelConfig, per_layer: bool = False
) -> DecodeState:
    """A ``DecodeState`` of shardings: the cache by the partition rules
    (``cache.cache_sharding``), per-row fields (``*_B``, ``*_Bx*``) over the batch axes, the
    rest replicated. ``generate_fixed`` pins the loop state to it inside the ``while_loop``
    (``DecodeSpec.state_sharding``) and returns it so."""
    rows, rep = batch_sharding(mesh, (batch,)), replicated(mesh)
    cache = cache_sharding(cfg, mesh, batch, per_layer)

    def field(name):
        if name == "cache":
            return cache
        return rows if name.endswith("_B") or "_Bx" in name else rep

    return DecodeState(**{f.name: field(f.name) for f in fields(DecodeState)})


@lru_cache(maxsize=32)
def sharded_generate_jit(mesh: Mesh, batch: int, cfg: ModelConfig, per_layer: bool = False):
    """``generate_jit`` with the output shardings of :func:`decode_state_sharding`."""
    return jax.jit(
        _generate, **_GENERATE_JIT, out_shardings=decode_state_sharding(mesh, batch, cfg, per_layer)
    )


def place_decode_inputs(inputs, mesh: Mesh):
    """``generate_jit``'s host inputs on ``mesh``: ``(la_LxD, prompt_BxP, prompt_len_B,
    active_B, eos_E, rng)`` with the LA embeddings, EOS ids and RNG replicated, the per-row
    arrays split over the batch axes."""
    la_LxD, prompt_BxP, prompt_len_B, active_B, eos_E, rng = inputs
    rep = replicated(mesh)
    rows = shard_batch((prompt_BxP, prompt_len_B, active_B), mesh, process_local=False)
    return (
        jax.device_put(np.asarray(la_LxD), rep),
        *rows,
        jax.device_put(eos_E, rep),
        jax.device_put(rng, rep),
    )


def switch_schedule(state: DecodeState, schedule: Schedule) -> DecodeState:
    """``state`` with empty draft arrays shaped for ``schedule`` (its bootstrap calls, or the
    paper's drafting call, draw them) and acceptance counts restarted."""
    B, V = state.y_B.shape[0], state.q_BxLxV.shape[-1]
    L, W, J = schedule.num_lookahead, schedule.width, schedule.depth
    return state.replace(
        drafts_BxLxW=jnp.zeros((B, L, W), jnp.int32),
        q_BxLxV=jnp.zeros((B, L, V), jnp.float32),
        accepted_BxJxW=jnp.zeros((B, J, W), jnp.int32),
        accepted_ctx_BxJ=jnp.zeros((B, J), jnp.int32),
    )


@partial(jax.jit, static_argnames=("max_len",))  # (no donation: the shapes change)
def grow_cache(state: DecodeState, max_len: int) -> DecodeState:
    """``state`` with ``max_len`` cache slots: its cache (``KVCache.grow``) and its token
    history ``hist_BxS`` padded with empty slots (never read: the context lookup stops at each
    row's length too). ``auto`` grows the cache when it switches to a layout whose calls need
    more slots than the cache it started with."""
    S = state.hist_BxS.shape[1]
    hist_BxS = jnp.pad(state.hist_BxS, ((0, 0), (0, max_len - S)))
    return state.replace(cache=state.cache.grow(max_len), hist_BxS=hist_BxS)


prefill_jit = jax.jit(prefill, static_argnums=0)  # one wrapper, so its compilation is reused


@partial(jax.jit, static_argnames=("spec", "bootstrap"), donate_argnames=("state",))
def resume_jit(
    spec: DecodeSpec, params, la_LxD, state: DecodeState, stop_B, bootstrap: bool
) -> DecodeState:
    """Go on decoding ``state`` with ``spec``'s schedule until each row has ``stop_B`` tokens
    (or is done, or the cache is full); ``bootstrap``: first run the schedule's bootstrap calls
    (after ``switch_schedule``; a state the same schedule left has its drafts already)."""
    return decode_loop(spec, params, la_LxD, state, stop_B, bootstrap=bootstrap)


@dataclass
class GenerationResult:
    """Generated token ids per row (EOS included when emitted) and per-row statistics."""

    tokens: list[list[int]]
    calls: list[int]  # forward calls per row, prefill included
    accepted_by_rank: np.ndarray  # [rows, J, W] accepted draws per depth and rank
    verify_calls: list[int]  # calls that verified drafts, per row
    wall_time: float  # seconds (includes compilation on the first call of a shape)
    method: str = ""
    auto: object = None  # method "auto": its choices (``auto.AutoLog``)
    accepted_context: np.ndarray | None = None  # [rows, J] accepted context drafts per depth
    # ``generate_fixed(..., compile_apart=True)``: seconds compiling, left out of wall_time
    compile_seconds: float = 0.0

    @property
    def accepted(self) -> np.ndarray:
        """``[rows, J]`` accepted drafts per depth (any rank, context drafts included)."""
        by_depth = self.accepted_by_rank.sum(-1)
        return by_depth if self.accepted_context is None else by_depth + self.accepted_context

    def stats(self) -> dict:
        """Summary: method, forward calls, tokens per call, acceptance rate per LA position
        (and per rank of the draws, for trees)."""
        tokens = sum(len(t) for t in self.tokens)
        calls = sum(self.calls)
        vc = max(sum(self.verify_calls), 1)
        out = {
            "method": self.method,
            "forward_calls": calls,
            "new_tokens": tokens,
            "tokens_per_call": tokens / max(calls, 1),
            "acceptance_per_position": (self.accepted.sum(0) / vc).round(4).tolist(),
            "wall_time_s": self.wall_time,
        }
        if self.accepted_by_rank.shape[-1] > 1:
            out["acceptance_per_position_and_rank"] = (
                (self.accepted_by_rank.sum(0) / vc).round(4).tolist()
            )
        if self.accepted_context is not None and self.accepted_context.any():
            out["context_acceptance_per_position"] = (
                (self.accepted_context.sum(0) / vc).round(4).tolist()
            )
        if self.auto is not None:
            out["auto"] = self.auto.stats()
        return out


def eos_array(eos_ids: Sequence[int]) -> np.ndarray:
    """EOS ids as a padded int32 array (-1 never matches), so the set is data, not a recompile."""
    ids = [int(e) for e in eos_ids]
    size = max(4, -(-len(ids) // 4) * 4)
    return np.asarray(ids + [-1] * (size - len(ids)), np.int32)


def bucket(n: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
    """Smallest bucket >= n (n itself rounded up to a multiple of 64 past the largest)."""
    for b in buckets:
        if n <= b:
            return b
    return -(-n // 64) * 64


def batch_bucket(n: int) -> int:
    """Batch sizes are padded to powers of two so a new batch size rarely recompiles."""
    return 1 << max(n - 1, 0).bit_length()


def required_cache_len(prompt_bucket: int, max_new_tokens: int, schedule: Schedule) -> int:
    """Slots needed: the padded prompt, every new token, and one call's scratch tokens."""
    return max(prompt_bucket, 0) + max_new_tokens + schedule.step_tokens


def round_cache_len(need: int) -> int:
    """The default cache size for ``need`` slots: rounded up to a multiple of 128."""
    return -(-need // 128) * 128


def prepare_batch(prompts: Sequence[Sequence[int]], vocab_size: int, row_multiple: int = 1):
    """Validate prompts and right-pad them to a bucket: (prompt_BxP, prompt_len_B, active_B).

    Rows are padded (inactive) to a power of two, then to a multiple of ``row_multiple`` (the
    number of batch shards on a mesh)."""
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: at least one token is needed (e.g. BOS)")
        bad = [t for t in p if not 0 <= int(t) < vocab_size]
        if bad:
            raise ValueError(
                f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab_size})"
            )
    B = batch_bucket(len(prompts))
    B = -(-B // row_multiple) * row_multiple
    P = bucket(max(len(p) for p in prompts))
    prompt_BxP = np.zeros((B, P), np.int32)
    prompt_len_B = np.ones((B,), np.int32)
    active_B = np.zeros((B,), bool)
    for i, p in enumerate(prompts):
        prompt_BxP[i, : len(p)] = p
        prompt_len_B[i] = len(p)
        active_B[i] = True
    return prompt_BxP, prompt_len_B, active_B


LAYER_FORMS = ("auto", "per-layer", "scanned")


def decode_stacked(layers: str = "auto") -> bool:
    """Whether to decode with stacked (scanned) layer params, for ``--layers``: ``per-layer``
    (a layer loop, the faster form on XLA:CPU, whose scanned layer copies its weights and cache
    slice every call), ``scanned`` (one ``lax.scan``: as fast or faster on GPU and TPU, with a
    compile time independent of depth), ``auto``: per-layer on a CPU, scanned elsewhere."""
    if layers not in LAYER_FORMS:
        raise ValueError(f"layers must be one of {LAYER_FORMS}, got {layers!r}")
    return jax.default_backend() != "cpu" if layers == "auto" else layers == "scanned"


def check_lengths(cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    """Raises ValueError when ``max_new_tokens`` < 1 or when the longest prompt plus
    ``max_new_tokens`` passes the model's maximum position (``max_position_embeddings``): the
    model was never trained there (RoPE) or has no embedding for it (learned positions)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt_len = max((len(p) for p in prompts), default=0)
    if prompt_len + max_new_tokens > cfg.max_position:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_len + max_new_tokens} exceeds the model's maximum position "
            f"({cfg.max_position}, max_position_embeddings); shorten the prompt or generate "
            f"at most {max(cfg.max_position - prompt_len, 0)} tokens"
        )


def generate_fixed(
    cfg: ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    method: str = "ar",
    la_LxD=None,
    sampler: SamplerConfig = SamplerConfig(),
    eos_ids: Sequence[int] | None = None,
    seed: int = 0,
    max_len: int | None = None,
    stream: Callable[[np.ndarray, np.ndarray], None] | None = None,
    mesh=None,
    return_state: bool = False,
    precision: str = "auto",
    cache_dtype=None,
    compile_apart: bool = False,
) -> GenerationResult:
    """Generate continuations of token-id prompts with one method throughout: every method but
    ``auto``. The arguments are those of ``generation.generate``, the entry point for all
    methods. ``compile_apart`` (one device): compile the program before running it
    (``compiled.executable``), and report the seconds as ``compile_seconds`` rather than in
    ``wall_time``."""
    check_lengths(cfg, prompts, max_new_tokens)
    cache_dtype = resolve_cache_dtype(cfg, cache_dtype)  # a bad dtype fails before any work
    if la_LxD is None and method_lookahead(method, 1):
        raise ValueError(f"method {method!r} needs look-ahead embeddings (la_LxD)")
    L = 0 if la_LxD is None or method == "ar" else int(np.shape(la_LxD)[0])
    schedule = make_schedule(method, L)
    if L and np.shape(la_LxD)[1] != cfg.d_model:
        raise ValueError(
            f"look-ahead embeddings have width {np.shape(la_LxD)[1]}, "
            f"the model has d_model={cfg.d_model}"
        )
    prompt_BxP, prompt_len_B, active_B = prepare_batch(
        prompts, cfg.vocab_size, 1 if mesh is None else batch_divisor(mesh)
    )
    B, P = prompt_BxP.shape
    need = required_cache_len(P, max_new_tokens, schedule)
    if max_len is None:
        max_len = round_cache_len(need)
    elif need > max_len:
        raise ValueError(
            f"cache too small: prompts padded to {P} tokens + max_new_tokens={max_new_tokens} + "
            f"{need - P - max_new_tokens} scratch slots for one {method} step need {need} slots, "
            f"the cache has max_len={max_len}"
        )
    if cfg.family == "gpt2" and need > cfg.max_position:
        raise ValueError(
            f"prompt + max_new_tokens + scratch ({need}) exceeds the model's "
            f"maximum position ({cfg.max_position})"
        )
    spec = DecodeSpec(
        cfg, schedule, sampler, int(max_new_tokens), decode_precision(cfg, sampler, precision)
    )
    per_layer = not is_stacked(params)  # model.unstack_layers params: a per-layer cache
    la = jnp.zeros((0, cfg.d_model), cfg.param_dtype) if la_LxD is None else la_LxD
    inputs = (
        la,
        prompt_BxP,
        prompt_len_B,
        active_B,
        eos_array(cfg.eos_token_ids if eos_ids is None else eos_ids),
        jax.random.PRNGKey(seed),
    )
    if mesh is None:
        run = generate_jit
        la, prompt, lens, active, eos, rng = map(jnp.asarray, inputs)
    else:
        run = sharded_generate_jit(mesh, B, cfg, per_layer)
        spec = replace(spec, state_sharding=decode_state_sharding(mesh, B, cfg, per_layer))
        la, prompt, lens, active, eos, rng = place_decode_inputs(inputs, mesh)
    cache = init_cache(cfg, B, max_len, cache_dtype, per_layer, mesh)
    args, compile_seconds = (params, la, prompt, lens, active, eos, cache, rng), 0.0
    stream_id = None if stream is None else next(_STREAM_IDS)
    if stream is not None:
        _STREAMS[stream_id] = stream
        sid = np.int32(stream_id)
        args += (jnp.asarray(sid) if mesh is None else jax.device_put(sid, replicated(mesh)),)
    try:
        program = partial(run, spec)
        if compile_apart and mesh is None:
            program, compile_seconds = compiled.executable(run, (spec,), {}, *args)
        t0 = time.perf_counter()
        state = program(*args)
        out, n = jax.block_until_ready((state.out_BxN, state.n_B))
        if stream is not None:  # on a GPU, io_callbacks may still be running on the host
            jax.effects_barrier()
        wall = time.perf_counter() - t0
    finally:
        _STREAMS.pop(stream_id, None)
    out, n = to_host(out), to_host(n)
    rows = len(prompts)
    result = GenerationResult(
        tokens=[out[i, : n[i]].tolist() for i in range(rows)],
        calls=to_host(state.calls_B)[:rows].tolist(),
        accepted_by_rank=to_host(state.accepted_BxJxW)[:rows],
        verify_calls=to_host(state.verify_calls_B)[:rows].tolist(),
        wall_time=wall,
        method=method,
        accepted_context=to_host(state.accepted_ctx_BxJ)[:rows],
        compile_seconds=compile_seconds,
    )
    return (result, state) if return_state else result


@partial(jax.jit, static_argnames=("spec", "n"), donate_argnames=("state",))
def run_steps(spec: DecodeSpec, params, la_LxD, state: DecodeState, n: int) -> DecodeState:
    """``n`` loop iterations (``pass_step``) of ``spec``'s schedule from ``state``, in one
    jitted ``fori_loop``, with no stop condition: the body of ``decode_loop`` without its
    bootstrap calls, for timing a step or stepping a state by hand.

    Shapes: ``la_LxD`` [L, D] (``[0, D]`` for autoregressive decoding); ``state`` a
    ``DecodeState`` of B rows (``y_B`` [B], ``drafts_BxLxW`` [B, L, W], ``q_BxLxV`` [B, L, V],
    ``out_BxN`` [B, spec.max_new_tokens], a cache of ``lengths`` [B] and max_len slots), its
    drafts already drawn: a state ``prefill`` left, after the schedule's bootstrap calls, or one
    ``decode_loop`` left. Returns the state after the ``n`` iterations, same shapes.
    The caller keeps ``n`` iterations within the cache (``spec.schedule.step_tokens`` slots
    each) and the rows it wants to emit active; done rows stay frozen. ``state`` is donated
    (the cache is updated in place, as ``resume_jit`` does): use the returned state.
    """

    def body(i, s: DecodeState) -> DecodeState:
        if spec.state_sharding is not None:  # the cache stays split as it came in
            s = jax.lax.with_sharding_constraint(s, spec.state_sharding)
        s = pass_step(spec, params, la_LxD, s)
        if spec.state_sharding is not None:
            s = jax.lax.with_sharding_constraint(s, spec.state_sharding)
        return s

    return jax.lax.fori_loop(0, n, body, state)
