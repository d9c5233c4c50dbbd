"""The KV cache: shapes and dtypes, bytes per token, lengths, ``move``, where the model writes its
entries, and that entries at or past ``lengths`` are garbage the model never reads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, jit_forward

from pass_jax.cache import KVCache, cache_bytes_per_token, init_cache, resolve_cache_dtype
from pass_jax.model import unstack_layers


def test_init_shapes_dtypes_and_lengths():
    """TINY: 2 layers, 2 kv heads, head_dim 32 / 4 = 8."""
    c = init_cache(TINY, batch=3, max_len=5)
    assert c.k.shape == c.v.shape == (2, 3, 2, 5, 8)  # [I, B, K, S, A]
    assert c.k.dtype == c.v.dtype == jnp.float32 and c.max_len == 5
    assert c.lengths.dtype == jnp.int32 and c.lengths.tolist() == [0, 0, 0]
    assert not np.asarray(c.k).any() and not np.asarray(c.v).any()

    p = init_cache(TINY, batch=3, max_len=5, dtype=jnp.bfloat16, per_layer=True)
    assert isinstance(p.k, tuple) and isinstance(p.v, tuple) and len(p.k) == len(p.v) == 2
    assert all(x.shape == (3, 2, 5, 8) and x.dtype == jnp.bfloat16 for x in p.k + p.v)
    assert p.max_len == 5 and p.lengths.tolist() == [0, 0, 0]
    # the config's compute dtype is the default; head_dim and kv heads come from the config
    odd = TINY.replace(dtype="bfloat16", head_dim=12, n_kv_heads=4, n_layers=3)
    c = init_cache(odd, batch=1, max_len=2)
    assert c.k.shape == (3, 1, 4, 2, 12) and c.k.dtype == jnp.bfloat16
    assert len(jax.tree.leaves(c)) == 3 and len(jax.tree.leaves(p)) == 2 * 2 + 1  # pytrees
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"cache max_len must be >= 1, got {bad}"):
            init_cache(TINY, 1, bad)


def test_init_cache_is_one_program_per_shape():
    """An empty cache is one jitted program per shape (one dispatch, not one per layer's k
    and v), compiled once: a second cache of the same shape reuses it, and is a new buffer
    (the generation programs donate theirs)."""
    from pass_jax.cache import _empty_program

    first = init_cache(TINY, batch=2, max_len=6, per_layer=True)
    again = init_cache(TINY, batch=2, max_len=6, per_layer=True)
    program = _empty_program(TINY, 2, 6, jnp.dtype(jnp.float32), True, None)
    assert program._cache_size() == 1  # compiled once for both caches
    assert again.k[0] is not first.k[0] and again.k[0].shape == (2, 2, 6, 8)
    assert not np.asarray(again.k[1]).any() and again.lengths.tolist() == [0, 0]


def test_cache_bytes_per_token_and_cache_dtypes():
    assert cache_bytes_per_token(TINY) == 2 * 2 * 2 * 8 * 4 == 256  # K and V, I, K, A, float32
    assert cache_bytes_per_token(TINY, jnp.bfloat16) == 128
    assert cache_bytes_per_token(TINY.replace(dtype="float16")) == 128
    odd = TINY.replace(head_dim=12, n_kv_heads=4, n_layers=3)
    assert cache_bytes_per_token(odd) == 2 * 3 * 4 * 12 * 4 == 1152
    for per_layer in (False, True):  # what a cache of B rows and S slots holds
        c = init_cache(odd, batch=2, max_len=7, per_layer=per_layer)
        assert sum(x.nbytes for x in jax.tree.leaves((c.k, c.v))) == 2 * 7 * 1152
    # the cache dtype: a name or a dtype; None and "auto" mean the compute dtype
    assert cache_bytes_per_token(TINY, "bfloat16") == cache_bytes_per_token(TINY, "auto") // 2
    assert resolve_cache_dtype(TINY.replace(dtype="bfloat16"), None) == jnp.bfloat16
    assert resolve_cache_dtype(TINY, "auto") == jnp.float32
    for bad in ("int8", "fp8", jnp.int32):
        with pytest.raises(ValueError, match="cache dtype must be a floating dtype"):
            init_cache(TINY, 1, 2, bad)


def _numbered(per_layer: bool) -> KVCache:
    """1 layer, 2 rows, 1 kv head, 5 slots, head_dim 1: k = 10 * row + slot, v = -k."""
    k = (10 * np.arange(2)[:, None] + np.arange(5)[None, :]).astype(np.float32)
    k = jnp.asarray(k[None, :, None, :, None])  # [I, B, K, S, A]
    if per_layer:
        return KVCache(k=(k[0],), v=(-k[0],), lengths=jnp.array([1, 2], jnp.int32))
    return KVCache(k=k, v=-k, lengths=jnp.array([1, 2], jnp.int32))


@pytest.mark.parametrize("per_layer", [False, True])
def test_advance_and_move(per_layer):
    c = _numbered(per_layer)
    assert c.advance(jnp.array([2, 0])).lengths.tolist() == [3, 2]
    assert c.advance(jnp.array([1.0, 3.0])).lengths.dtype == jnp.int32
    # row 0 swaps slots 1 and 2 (all read before any write); row 1 copies slot 4 to 2, and its
    # move to slot 9 (past the end) is dropped
    moved = c.move(jnp.array([[1, 2], [4, 0]]), jnp.array([[2, 1], [2, 9]]))
    k = moved.k[0]  # layer 0: [B, K, S, A]
    np.testing.assert_array_equal(
        np.asarray(k)[:, 0, :, 0], [[0, 2, 1, 3, 4], [10, 11, 14, 13, 14]]
    )
    v = moved.v[0]
    np.testing.assert_array_equal(
        np.asarray(v)[:, 0, :, 0], [[0, -2, -1, -3, -4], [-10, -11, -14, -13, -14]]
    )
    assert moved.lengths.tolist() == [1, 2]  # moving commits nothing


# ------------------------------------------------------------------- through the model

B, S, T = 2, 8, 6  # rows, cache slots, tokens of SEQ
LENGTHS = [3, 5]  # committed tokens per row after the prefill: row 0's slots 3.. are stale
SEQ = np.asarray(jax.random.randint(jax.random.PRNGKey(7), (B, T), 0, TINY.vocab_size), np.int32)


def _kv(cache):
    """Every layer's K and V as ``[I, B, K, S, A]`` numpy arrays."""
    return tuple(np.stack(x) if isinstance(x, tuple) else np.asarray(x) for x in (cache.k, cache.v))


@pytest.fixture(scope="module", params=["stacked", "per_layer"])
def model(request, tiny_model):
    """``(params, prefill)`` in one of the two forms: ``prefill = (logits, cache)`` of all of SEQ
    run from an empty cache (reading no cache slot, so the logits are the plain causal
    forward's)."""
    cfg, params = tiny_model
    per_layer = request.param == "per_layer"
    params = unstack_layers(params) if per_layer else params
    empty = init_cache(cfg, B, S, per_layer=per_layer)
    logits, cache = jit_forward(cfg, params, SEQ, np.broadcast_to(np.arange(T), SEQ.shape), empty)
    return params, (np.asarray(logits), cache)


def _prefilled(model):
    """The prefill's cache with ``lengths`` = LENGTHS."""
    _, (_, cache) = model
    return cache.advance(jnp.asarray(LENGTHS))


def _step(params, cache):
    """Row b feeds SEQ[b, LENGTHS[b]] at position LENGTHS[b]: ``(logits [B, V], cache)``."""
    n = np.asarray(LENGTHS)
    logits, cache = jit_forward(TINY, params, SEQ[np.arange(B), n][:, None], n[:, None], cache)
    return np.asarray(logits)[:, 0], cache


def _junk_past_lengths(cache):
    """``cache`` with large junk in every slot at or past ``LENGTHS``, K and V, every layer."""
    past_BxS = np.arange(S)[None, :] >= np.asarray(LENGTHS)[:, None]  # [B, S]
    rng = np.random.default_rng(0)

    def junk(x):
        noise = (1e3 * rng.standard_normal(x.shape)).astype(x.dtype)
        return jnp.where(past_BxS[..., None, :, None], noise, x)  # [.., B, K, S, A]

    return cache.replace(k=jax.tree.map(junk, cache.k), v=jax.tree.map(junk, cache.v))


def test_forward_writes_at_lengths_and_leaves_other_slots(model):
    params, (_, prefill) = model
    assert prefill.lengths.tolist() == [0, 0]  # forward writes, only advance commits
    k, v = _kv(prefill)  # T tokens from lengths 0: slots 0..T-1 written, the rest untouched
    assert np.abs(k[:, :, :, :T]).min() > 0 and np.abs(v[:, :, :, :T]).min() > 0
    assert not k[:, :, :, T:].any() and not v[:, :, :, T:].any()
    dirty = _junk_past_lengths(_prefilled(model))
    k, v = _kv(dirty)
    _, after = _step(params, dirty)
    k2, v2 = _kv(after)
    for b, n in enumerate(LENGTHS):  # the step's entry lands at slot lengths[b], nowhere else
        changed = np.flatnonzero((k2[:, b] != k[:, b]).any(axis=(0, 1, 3)))
        assert changed.tolist() == [n], (b, changed)
        assert (v2[:, b] != v[:, b]).any(axis=(0, 1, 3)).nonzero()[0].tolist() == [n]
    # the entry is the one the prefill of the whole sequence wrote at that slot
    kw, vw = _kv(prefill)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(k2[:, b, :, n], kw[:, b, :, n], atol=1e-5, rtol=0)
        np.testing.assert_allclose(v2[:, b, :, n], vw[:, b, :, n], atol=1e-5, rtol=0)


def test_entries_past_lengths_are_never_read(model):
    """The cached step of a ragged batch (row 0 has stale entries at slots 3..5) equals the full
    forward's logits, and stays bitwise the same when every slot at or past ``lengths`` holds
    large junk, K and V, in every layer."""
    params, (full, _) = model
    cache = _prefilled(model)
    logits, _ = _step(params, cache)
    want = full[np.arange(B), LENGTHS]
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)

    dirty = _junk_past_lengths(cache)
    assert np.abs(_kv(dirty)[0][:, 0, :, 3:]).max() > 100  # the junk is there
    junk_logits, _ = _step(params, dirty)
    np.testing.assert_array_equal(junk_logits, logits)

    # and a cache that thinks row 0 has 5 committed tokens does read slots 3, 4
    wrong, _ = _step(params, dirty.replace(lengths=jnp.array([5, 5], jnp.int32)))
    assert np.abs(wrong[0] - logits[0]).max() > 1e-3


def test_rolled_back_entries_are_overwritten(model):
    """A call whose token is not committed (a rejected draft) leaves nothing behind: the next
    call at the same ``lengths`` overwrites its slot and computes what it would have."""
    params, _ = model
    cache = _prefilled(model)
    logits, _ = _step(params, cache)
    n = np.asarray(LENGTHS)
    rejected = (SEQ[np.arange(B), n] + 1) % TINY.vocab_size  # another token at the same place
    _, after_reject = jit_forward(TINY, params, rejected[:, None], n[:, None], cache)
    assert after_reject.lengths.tolist() == LENGTHS
    k, k_rejected = _kv(cache)[0], _kv(after_reject)[0]
    for b, m in enumerate(LENGTHS):  # the rejected entry was written at slot lengths[b]
        assert np.abs(k_rejected[:, b, :, m] - k[:, b, :, m]).max() > 1e-3
    again, cache2 = _step(params, after_reject)
    np.testing.assert_array_equal(again, logits)
    _, clean = _step(params, cache)
    np.testing.assert_array_equal(_kv(cache2)[0], _kv(clean)[0])


def test_cache_form_must_match_the_params(tiny_model):
    cfg, params = tiny_model
    tok, pos = np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32)
    with pytest.raises(ValueError, match="a per-layer cache .* goes with unstacked params"):
        jit_forward(cfg, params, tok, pos, init_cache(cfg, 1, 2, per_layer=True))
    with pytest.raises(ValueError, match="a stacked one with stacked"):
        jit_forward(cfg, unstack_layers(params), tok, pos, init_cache(cfg, 1, 2))


def test_a_bfloat16_cache_under_float32_compute(tiny_model):
    """A bfloat16 cache under float32 compute keeps its dtype through the calls, and a token
    reads the same keys and values whether the tokens before it came in earlier calls (from the
    cache, rounded to bfloat16) or in its own call (rounded the same way when computed): one
    call of 3 tokens after a prefill of 3 gives the logits of 3 one-token calls to float32
    accuracy. Unrounded in-call keys and values would differ by ~1e-4 here. (Per-layer params,
    the CPU's decoding form; ``test_decode`` decodes over a bfloat16 cache with stacked ones.)"""
    params = unstack_layers(tiny_model[1])
    positions = np.broadcast_to(np.arange(T), SEQ.shape)
    cache = init_cache(TINY, B, S, "bfloat16", per_layer=True)
    _, cache = jit_forward(TINY, params, SEQ[:, :3], positions[:, :3], cache)
    cache = cache.advance(jnp.full((B,), 3))
    one_call, _ = jit_forward(TINY, params, SEQ[:, 3:], positions[:, 3:], cache)
    steps = []
    for t in range(3, T):
        logits, cache = jit_forward(TINY, params, SEQ[:, t : t + 1], positions[:, t : t + 1], cache)
        cache = cache.advance(jnp.ones((B,), jnp.int32))
        steps.append(np.asarray(logits))
    assert {x.dtype for x in cache.k + cache.v} == {jnp.dtype(jnp.bfloat16)}
    assert one_call.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(one_call), np.concatenate(steps, 1), rtol=0, atol=1e-6)
