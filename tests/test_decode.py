"""Decoding: greedy losslessness (chains and draft trees), step invariants, the cache a tree
commits, compilation count, streaming, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pass_jax.iteration_cost as iteration_cost
from pass_jax.cache import init_cache
from pass_jax.config import ModelConfig, SamplerConfig
from pass_jax.decode import (
    _STREAMS,
    DecodeSpec,
    eos_array,
    generate_fixed,
    generate_jit,
    grow_cache,
    layout_call,
    pass_step,
    prefill,
    prepare_batch,
    run_steps,
)
from pass_jax.generation import generate
from pass_jax.layout import make_schedule
from pass_jax.model import forward, init_params, stack_layers, unstack_layers

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)
PROMPTS = [[3, 9, 27], [5, 1, 4, 1, 5, 9, 2, 6], [7] * 13]


def _params(seed):
    return init_params(CFG, jax.random.PRNGKey(seed))


def _la(L, seed, params=None):
    """Random LA embeddings; half of the seeds start from real token embeddings (more accepts)."""
    la = 0.05 * jax.random.normal(jax.random.PRNGKey(100 + seed), (L, CFG.d_model))
    if params is not None and seed % 2:
        la = la + params["embed"]["embedding"][jnp.arange(L) % CFG.vocab_size]
    return la


@pytest.mark.parametrize("L", [1, 2, 4, 6])
def test_greedy_pass_equals_autoregressive(L):
    accepted = 0
    for seed in range(4):
        params = _params(seed)
        plain = generate(CFG, params, PROMPTS, max_new_tokens=24, method="ar", eos_ids=())
        # an EOS that really occurs mid-row, so truncation inside accepted drafts is exercised
        eos = (plain.tokens[1][len(plain.tokens[1]) // 2],)
        ar = generate(CFG, params, PROMPTS, max_new_tokens=24, method="ar", eos_ids=eos)
        assert any(len(t) < 24 for t in ar.tokens)
        for method in ("pass", "pass-fused"):
            for la_seed in (seed, seed + 1):
                out = generate(
                    CFG,
                    params,
                    PROMPTS,
                    max_new_tokens=24,
                    method=method,
                    la_LxD=_la(L, la_seed, params),
                    eos_ids=eos,
                )
                assert out.tokens == ar.tokens, (method, L, seed)
                accepted += int(out.accepted.sum())
    assert accepted > 0, "no draft was ever accepted: the acceptance path went untested"


def _with_eos_mid_row(seed, per_layer):
    """Params of ``seed`` (per layer or stacked), an EOS that occurs mid-row (in row 1's greedy
    continuation) and greedy autoregressive decoding of PROMPTS with it: 24 tokens at most."""
    params = _params(seed)
    if per_layer:
        params = unstack_layers(params)
    plain = generate(CFG, params, PROMPTS, max_new_tokens=24, method="ar", eos_ids=())
    eos = (plain.tokens[1][len(plain.tokens[1]) // 2],)
    return params, eos, generate(CFG, params, PROMPTS, max_new_tokens=24, method="ar", eos_ids=eos)


@pytest.mark.parametrize(
    "widths,per_layer", [((2,), False), ((2, 2), True), ((3, 2, 1, 1), False), ((2, 3, 1), False)]
)
def test_greedy_trees_equal_autoregressive(widths, per_layer):
    """Draft trees (L = 4 embeddings, depth <= 4), batch of 3, an EOS that occurs mid-row:
    the same tokens as autoregressive decoding; branches (ranks > 0) are accepted, so paths that
    are not contiguous in the call get compacted into the cache."""
    method = "tree-" + "x".join(map(str, widths))
    by_rank = 0
    for seed in range(3):
        params, eos, ar = _with_eos_mid_row(seed, per_layer)
        for la_seed in (seed, seed + 1):
            out = generate(
                CFG,
                params,
                PROMPTS,
                max_new_tokens=24,
                method=method,
                la_LxD=_la(4, la_seed, _params(seed)),
                eos_ids=eos,
            )
            assert out.tokens == ar.tokens, (method, seed, la_seed)
            assert out.accepted_by_rank.shape[1:] == (len(widths), max(widths))
            by_rank += int(out.accepted_by_rank[:, :, 1:].sum())
    assert by_rank > 0, "no branch was ever accepted: compaction went untested"


@pytest.mark.parametrize("method,per_layer", [("ctx-3", False), ("tree-2+ctx2", True)])
def test_greedy_context_drafts_equal_autoregressive(method, per_layer):
    """Context drafts (copied from the sequence), alone and under the root and the draws of a
    tree, batch of 3, an EOS that occurs mid-row: autoregressive decoding's tokens, with
    context drafts accepted (at depth 2 and deeper too)."""
    by_depth = 0
    for seed in range(3):
        params, eos, ar = _with_eos_mid_row(seed, per_layer)
        la = None if method.startswith("ctx") else _la(2, seed, _params(seed))
        out = generate(
            CFG, params, PROMPTS, max_new_tokens=24, method=method, la_LxD=la, eos_ids=eos
        )
        assert out.tokens == ar.tokens, (method, seed)
        assert out.accepted_context.shape[1:] == (3,)
        by_depth += out.accepted_context[:, 1:].sum()
    assert by_depth > 0, "no context draft past depth 1 was accepted"


def test_eos_accepted_inside_a_branch_ends_the_row():
    """Planted drafts: at depths 1 and 2 the rank-1 draw is the autoregressive continuation and
    the others are wrong, so the accepted path is a branch whose nodes are not contiguous in the
    call. The EOS is the branch's first token for row 0: that row stops there, the others emit
    their three tokens, and the committed cache is autoregressive decoding's; the generation
    then goes on to the same output as autoregressive decoding with that EOS."""
    params = _params(2)
    la = _la(2, 3, params)
    want = generate(CFG, params, PROMPTS, max_new_tokens=24, method="ar", eos_ids=()).tokens
    eos = want[0][1]
    assert eos != want[0][0]
    spec = DecodeSpec(CFG, make_schedule("tree-3x2", 2), SamplerConfig(), 24)
    p, lens, active = map(jnp.asarray, prepare_batch(PROMPTS, CFG.vocab_size))
    state = prefill(
        spec,
        params,
        p,
        lens,
        active,
        eos_array((eos,)),
        init_cache(CFG, p.shape[0], 128),
        jax.random.PRNGKey(0),
    )
    right_Bx3 = np.zeros((p.shape[0], 3), np.int32)
    right_Bx3[: len(PROMPTS)] = [t[1:4] for t in want]
    wrong = lambda k: (right_Bx3[:, :2] + k) % CFG.vocab_size
    drafts = np.stack([wrong(1), right_Bx3[:, :2], wrong(2)], axis=-1)  # [B, depth, rank]
    state = state.replace(drafts_BxLxW=jnp.asarray(drafts))
    state = jax.jit(layout_call, static_argnums=(0, 1))(
        spec, spec.schedule.step[0], params, la, state
    )
    n = np.asarray(state.n_B)[: len(PROMPTS)]
    assert n[0] == 2 and bool(state.done_B[0])
    for b in range(1, len(PROMPTS)):
        stop = [i for i, t in enumerate(want[b][:4]) if t == eos]
        assert n[b] == (stop[0] + 1 if stop else 4)
    np.testing.assert_array_equal(np.asarray(state.accepted_BxJxW)[1], [[0, 1, 0], [0, 1, 0]])
    # the committed cache holds what autoregressive decoding writes
    _, ar_state = generate(
        CFG,
        params,
        PROMPTS,
        max_new_tokens=24,
        method="ar",
        eos_ids=(),
        max_len=128,
        return_state=True,
    )
    for got, ref in zip(jax.tree.leaves(state.cache), jax.tree.leaves(ar_state.cache)):
        if got.ndim > 1:  # [I, B, K, S, A]
            for b in range(len(PROMPTS)):
                m = int(state.cache.lengths[b])
                np.testing.assert_allclose(got[:, b, :, :m], ref[:, b, :, :m], atol=1e-5)
    step = jax.jit(pass_step, static_argnums=0)
    for _ in range(24):
        state = step(spec, params, la, state)
    out, n = np.asarray(state.out_BxN), np.asarray(state.n_B)
    ar = generate(CFG, params, PROMPTS, max_new_tokens=24, method="ar", eos_ids=(eos,))
    assert [out[b, : n[b]].tolist() for b in range(len(PROMPTS))] == ar.tokens


def test_tree_commits_the_cache_autoregressive_decoding_does():
    """After a greedy tree generation with accepted branches, every committed cache slot holds
    the keys/values autoregressive decoding wrote there (stacked and per-layer caches)."""
    for params in (_params(1), unstack_layers(_params(1))):
        kw = dict(max_new_tokens=24, eos_ids=(), return_state=True)
        ar, ar_state = generate(CFG, params, PROMPTS, method="ar", **kw)
        tree, state = generate(
            CFG, params, PROMPTS, method="tree-3x2x1", la_LxD=_la(3, 1, _params(1)), **kw
        )
        assert tree.tokens == ar.tokens and tree.accepted_by_rank[:, :, 1:].sum() > 0
        lengths = np.minimum(state.cache.lengths, ar_state.cache.lengths)
        for got, want in zip(
            jax.tree.leaves((state.cache.k, state.cache.v)),
            jax.tree.leaves((ar_state.cache.k, ar_state.cache.v)),
        ):
            for b, n in enumerate(lengths[: len(PROMPTS)]):  # [.., B, K, S, A]
                np.testing.assert_allclose(got[..., b, :, :n, :], want[..., b, :, :n, :], atol=1e-5)


def test_per_layer_params_decode_like_stacked():
    """``unstack_layers`` params (a loop over layers, a per-layer cache updated in place) give
    the same tokens, calls and acceptances as the stacked, scanned params (autoregressive and
    fused sampled, fused greedy); the two forms convert back and forth exactly."""
    params = _params(5)
    per_layer = unstack_layers(params)
    assert sorted(per_layer) == ["embed", "final_norm", "layers_0", "layers_1", "lm_head"]
    jax.tree.map(np.testing.assert_array_equal, stack_layers(per_layer), params)
    la = _la(3, 1, params)
    accepted = 0
    runs = [(SamplerConfig(0.9, top_k=8), m) for m in ("ar", "pass-fused")]
    for sampler, method in runs + [(SamplerConfig(), "pass-fused")]:
        kw = dict(max_new_tokens=20, method=method, la_LxD=la, sampler=sampler, eos_ids=(), seed=4)
        a = generate(CFG, params, PROMPTS, **kw)
        b, state = generate(CFG, per_layer, PROMPTS, return_state=True, **kw)
        assert b.tokens == a.tokens and b.calls == a.calls, (method, sampler)
        np.testing.assert_array_equal(b.accepted, a.accepted)
        accepted += int(b.accepted.sum())
    assert accepted > 0
    assert isinstance(state.cache.k, tuple) and len(state.cache.k) == CFG.n_layers
    with pytest.raises(ValueError, match="per-layer cache"):
        forward(
            CFG,
            params,
            jnp.ones((1, 1), jnp.int32),
            jnp.zeros((1, 1), jnp.int32),
            init_cache(CFG, 1, 8, per_layer=True),
        )
    with pytest.raises(ValueError, match="per-layer cache"):
        forward(
            CFG,
            per_layer,
            jnp.ones((1, 1), jnp.int32),
            jnp.zeros((1, 1), jnp.int32),
            init_cache(CFG, 1, 8),
        )


def _run_steps(spec, params, la, prompts, steps):
    """Prefill + bootstrap, then ``steps`` jitted pass_steps (``run_steps``, one at a time);
    returns n_B after each step."""
    p, lens, active = map(jnp.asarray, prepare_batch(prompts, spec.cfg.vocab_size))
    state = prefill(
        spec,
        params,
        p,
        lens,
        active,
        eos_array(()),
        init_cache(spec.cfg, p.shape[0], 256),
        jax.random.PRNGKey(0),
    )
    for lay in spec.schedule.bootstrap:
        state = layout_call(spec, lay, params, la, state)
    counts = [np.asarray(state.n_B)]
    for _ in range(steps):
        state = run_steps(spec, params, la, state, 1)
        counts.append(np.asarray(state.n_B))
    return np.stack(counts)[:, : len(prompts)]


@pytest.mark.parametrize("method,min_per_step", [("pass", 2), ("pass-fused", 1), ("tree-2x2x1", 1)])
def test_tokens_per_step_lower_bound(method, min_per_step):
    L = 3
    params = _params(7)
    spec = DecodeSpec(CFG, make_schedule(method, L), SamplerConfig(temperature=1.0), 200)
    counts = _run_steps(spec, params, _la(L, 1, params), PROMPTS, 6)
    per_step = np.diff(counts, axis=0)
    assert (per_step >= min_per_step).all() and (per_step <= L + min_per_step).all()


@pytest.mark.parametrize(
    "method,per_step", [("pass", 4 + 2), ("pass-fused", 4 + 1), ("tree-2x2x1", 3 + 1)]
)
def test_oracle_drafts_give_maximal_tokens_per_step(method, per_step):
    """With a zeroed final norm all logits are equal: every draft (argmax 0) is right, and a
    step commits the most its schedule says it can (``step_emits``: what auto's timing sizes
    its cache by)."""
    L = 4
    params = _params(3)
    params = {**params, "final_norm": {"scale": jnp.zeros_like(params["final_norm"]["scale"])}}
    spec = DecodeSpec(CFG, make_schedule(method, L), SamplerConfig(), 200)
    assert spec.schedule.step_emits == per_step
    counts = _run_steps(spec, params, _la(L, 0), PROMPTS, 5)
    assert (np.diff(counts, axis=0) == per_step).all()
    res = generate(CFG, params, PROMPTS, max_new_tokens=41, method=method, la_LxD=_la(L, 0))
    assert all(len(t) == 41 for t in res.tokens)
    assert (res.accepted == res.accepted[:, :1]).all() and res.accepted.min() > 0


def test_step_compiles_once_per_bucket():
    params = _params(0)
    la = _la(2, 0)
    kw = dict(
        max_new_tokens=10,
        method="pass-fused",
        la_LxD=la,
        sampler=SamplerConfig(temperature=0.7, top_k=5),
    )
    generate(CFG, params, [[1, 2, 3]] * 3, **kw)
    before = generate_jit._cache_size()
    for seed, prompts in enumerate([[[1] * 9] * 4, [[2] * 14, [3]], [[4] * 5] * 3]):
        generate(CFG, params, prompts[:3] + [[1]] * (3 - len(prompts)), seed=seed, **kw)
    assert generate_jit._cache_size() == before  # same (batch bucket 4, prompt bucket 16, layout)
    generate(CFG, params, [[1] * 20] * 3, **kw)  # prompt bucket 32: one more
    assert generate_jit._cache_size() == before + 1


def test_unjitted_step_matches_jitted():
    """The fused step function run op by op equals its jitted version (sampling, one call)."""
    params = _params(1)
    la = _la(2, 1, params)
    spec = DecodeSpec(CFG, make_schedule("pass-fused", 2), SamplerConfig(0.9, top_k=8), 16)
    p, lens, active = map(jnp.asarray, prepare_batch(PROMPTS[:2], CFG.vocab_size))
    state = jax.jit(prefill, static_argnums=0)(
        spec,
        params,
        p,
        lens,
        active,
        eos_array(()),
        init_cache(CFG, p.shape[0], 64),
        jax.random.PRNGKey(3),
    )
    state = jax.jit(layout_call, static_argnums=(0, 1))(
        spec, spec.schedule.bootstrap[0], params, la, state
    )
    jitted = jax.jit(pass_step, static_argnums=0)(spec, params, la, state)
    with jax.disable_jit():
        eager = pass_step(spec, params, la, state)
    for name in ("out_BxN", "n_B", "drafts_BxLxW", "y_B", "accepted_BxJxW", "hist_BxS"):
        np.testing.assert_array_equal(getattr(eager, name), getattr(jitted, name), err_msg=name)
    np.testing.assert_allclose(eager.q_BxLxV, jitted.q_BxLxV, atol=1e-5)


def test_sampling_seed_reproducible_and_filtered():
    params = _params(2)
    samp = SamplerConfig(temperature=1.5, top_k=3)
    a = generate(CFG, params, PROMPTS, max_new_tokens=16, sampler=samp, seed=11)
    b = generate(CFG, params, PROMPTS, max_new_tokens=16, sampler=samp, seed=11)
    c = generate(CFG, params, PROMPTS, max_new_tokens=16, sampler=samp, seed=12)
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_streaming_delivers_tokens_as_generated():
    params = _params(4)
    seen = []
    res = generate(
        CFG,
        params,
        PROMPTS[:1],
        max_new_tokens=12,
        method="pass-fused",
        la_LxD=_la(2, 4),
        stream=lambda out, n: seen.append(out[0, : n[0]].tolist()),
    )
    assert len(seen) >= 3
    assert all(seen[i + 1][: len(seen[i])] == seen[i] for i in range(len(seen) - 1))
    assert seen[-1] == res.tokens[0]


def test_a_new_stream_callable_runs_the_program_compiled_for_streaming():
    """The callable is not part of the program (it is looked up by an id the program gets),
    so a callable per request (a server's lambdas) compiles nothing new; each generation's
    tokens reach its own callable, and none is left registered."""
    params = _params(4)
    run = lambda stream: generate(CFG, params, PROMPTS[:1], max_new_tokens=6, stream=stream)
    run(lambda out, n: None)
    before = generate_jit._cache_size()
    got = {}
    for key in ("a", "b", "c"):
        res = run(lambda out, n, key=key: got.setdefault(key, []).append(n[0]))
        assert got[key][-1] == len(res.tokens[0])
    assert generate_jit._cache_size() == before and not _STREAMS


def test_bad_input_errors():
    params = _params(0)
    with pytest.raises(ValueError, match="empty"):
        generate(CFG, params, [[1, 2], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(CFG, params, [[1, 64]], max_new_tokens=4)
    with pytest.raises(ValueError, match="cache too small"):
        generate(CFG, params, [[1] * 10], max_new_tokens=100, max_len=64)
    with pytest.raises(ValueError, match=">= 1"):
        generate(CFG, params, [[1]], max_new_tokens=4, method="pass", la_LxD=jnp.zeros((0, 32)))
    with pytest.raises(ValueError, match="d_model=32"):
        generate(CFG, params, [[1]], max_new_tokens=4, method="pass", la_LxD=jnp.zeros((2, 16)))
    with pytest.raises(ValueError, match="needs look-ahead"):
        generate(CFG, params, [[1]], max_new_tokens=4, method="pass")
    with pytest.raises(ValueError, match="unknown decoding method"):
        generate(CFG, params, [[1]], max_new_tokens=4, method="beam", la_LxD=_la(2, 0))
    with pytest.raises(ValueError, match="temperature"):
        SamplerConfig(temperature=-0.1)
    for top_p in (0.0, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            SamplerConfig(temperature=1.0, top_p=top_p)


@pytest.mark.parametrize(
    "sampler",
    [SamplerConfig(1e-30), SamplerConfig(1e-10), SamplerConfig(1e-30, top_k=5, top_p=0.9)],
    ids=["t1e-30", "t1e-10", "t1e-30k5p.9"],
)
def test_tiny_temperature_samples_like_greedy(sampler):
    """A temperature near 0 is a one-hot distribution: every method's sampled tokens equal the
    greedy ones (they were token 0 from NaN probabilities once)."""
    params = _params(6)
    la = _la(3, 1, params)
    greedy = generate(CFG, params, PROMPTS, max_new_tokens=16, method="ar", eos_ids=())
    for method in ("ar", "pass", "pass-fused"):
        out = generate(
            CFG,
            params,
            PROMPTS,
            max_new_tokens=16,
            method=method,
            la_LxD=la,
            sampler=sampler,
            eos_ids=(),
            seed=2,
        )
        assert out.tokens == greedy.tokens, method


def test_greedy_float32_decodes_at_highest_matmul_precision(monkeypatch):
    """Greedy PaSS equals greedy AR exactly only if calls over different token counts round the
    same way: at TF32 (the GPU default for float32) a near-tie can flip. ``auto`` therefore
    compiles the greedy float32 step with every matmul at HIGHEST precision (seen in the lowered
    program), sampling and bfloat16 at JAX's default; ``generate`` passes the choice on."""
    from pass_jax import decode

    greedy, sampled = SamplerConfig(), SamplerConfig(temperature=0.8)
    assert decode.decode_precision(CFG, greedy) == "highest"
    assert decode.decode_precision(CFG, sampled) is None
    assert decode.decode_precision(CFG.replace(dtype="bfloat16"), greedy) is None
    assert decode.decode_precision(CFG, greedy, "default") is None
    assert decode.decode_precision(CFG, sampled, "highest") == "highest"
    with pytest.raises(ValueError, match="precision must be one of"):
        decode.decode_precision(CFG, greedy, "fast")

    params, la = _params(0), _la(2, 1)
    p, lens, active = map(jnp.asarray, prepare_batch(PROMPTS, CFG.vocab_size))

    def dot_precisions(precision):
        spec = DecodeSpec(CFG, make_schedule("pass-fused", 2), greedy, 8, precision)
        text = generate_jit.lower(
            spec,
            params,
            la,
            p,
            lens,
            active,
            eos_array(()),
            init_cache(CFG, p.shape[0], 128),
            jax.random.PRNGKey(0),
        ).as_text()
        return {
            line.split("precision = ")[1].split("]")[0] + "]"
            for line in text.splitlines()
            if "dot_general" in line
        }

    # the suite runs at "highest" (conftest); under a program-wide DEFAULT the spec still wins
    with jax.default_matmul_precision("bfloat16"):
        assert dot_precisions("highest") == {"[HIGHEST, HIGHEST]"}
        assert dot_precisions(None) == {"[DEFAULT, DEFAULT]"}

    seen = []
    real = decode.generate_jit
    monkeypatch.setattr(
        decode,
        "generate_jit",
        lambda spec, *a, **k: seen.append(spec.precision) or real(spec, *a, **k),
    )
    for sampler, precision in ((greedy, "auto"), (sampled, "auto"), (greedy, "default")):
        generate(CFG, params, PROMPTS[:1], max_new_tokens=2, sampler=sampler, precision=precision)
    assert seen == ["highest", None, None]


def test_greedy_pass_equals_autoregressive_in_bfloat16():
    """bfloat16 params, compute and KV cache (the cache's default dtype is the compute dtype;
    LA embeddings in bfloat16 too): greedy PaSS, fused and a draft tree, emits the
    autoregressive tokens of the same bfloat16 model, drafts accepted. (The paper's two calls
    over a bfloat16 cache: the next test.)"""
    cfg = CFG.replace(dtype="bfloat16", param_dtype="bfloat16")
    params = init_params(cfg, jax.random.PRNGKey(0))
    assert params["embed"]["embedding"].dtype == jnp.bfloat16
    la = params["embed"]["embedding"][:3] + 0.05  # real token embeddings: drafts get accepted
    ar, state = generate(cfg, params, PROMPTS, max_new_tokens=24, eos_ids=(), return_state=True)
    assert state.cache.k.dtype == state.cache.v.dtype == jnp.bfloat16
    accepted = 0
    for method in ("pass-fused", "tree-2x2"):
        out = generate(
            cfg,
            params,
            PROMPTS,
            max_new_tokens=24,
            method=method,
            la_LxD=la,
            eos_ids=(),
            cache_dtype="bfloat16",  # what the default gave autoregressive decoding
        )
        assert out.tokens == ar.tokens, method
        accepted += int(out.accepted.sum())
    assert accepted > 0


def test_greedy_pass_equals_autoregressive_over_a_bfloat16_cache(monkeypatch):
    """float32 params and compute, a bfloat16 KV cache: the cache arrays are bfloat16, and
    greedy PaSS, the paper's and a fused draft tree, emits autoregressive decoding's tokens
    over the same cache dtype, drafts accepted (weights scaled 4x: sharper logits, on which the
    cache's rounding weighs more, and drafts from token embeddings get accepted). ``auto``
    passes the cache dtype on: to the call costs it times, to the autoregressive loop it runs
    when nothing pays, and to the cache of its segments. A bad cache dtype is a clear error.
    (Stacked params; ``test_cache`` reads a bfloat16 cache with per-layer ones.)"""
    from pass_jax import auto

    params = jax.tree.map(lambda x: 4 * x, _params(1))
    la = params["embed"]["embedding"][:4] + 0.2 * jax.random.normal(jax.random.PRNGKey(1), (4, 32))
    run = lambda method="ar", **kw: generate(
        CFG, params, PROMPTS, max_new_tokens=24, method=method, eos_ids=(), **kw
    )
    ar, state = run(cache_dtype="bfloat16", return_state=True)
    assert state.cache.k.dtype == state.cache.v.dtype == jnp.bfloat16
    accepted = 0
    for method in ("pass", "tree-2x2"):  # a tree call is the fused call with wider levels
        out = run(method, la_LxD=la, cache_dtype=jnp.bfloat16)
        assert out.tokens == ar.tokens, method
        accepted += int(out.accepted.sum())
    assert accepted > 0

    timed = []
    monkeypatch.setattr(iteration_cost, "_COSTS", {})  # no cost table from another test
    monkeypatch.setattr(
        iteration_cost,
        "time_iterations",
        lambda cfg, p, la, slots, *a, cache_dtype, **k: {
            m: timed.append(cache_dtype) or (1.0 if m == "ar" else 9.0) for m in slots
        },
    )
    kw = {"la_LxD": la, "auto_methods": ["ar", "pass-fused"], "cache_dtype": "bfloat16"}
    res = run("auto", auto_prior=[0.1] * 4, **kw)  # the plain autoregressive loop
    assert res.auto.segments == ["ar"] and res.tokens == ar.tokens
    assert timed == [jnp.dtype(jnp.bfloat16)] * 2

    class CacheMade(Exception):
        """Stops ``auto`` once it has made the cache of its segments (nothing compiles)."""

    def made(*args, **kwargs):
        raise CacheMade(init_cache(*args, **kwargs))

    monkeypatch.setattr(auto, "init_cache", made)
    auto.forget()  # not the statistics the call above left
    with pytest.raises(CacheMade) as e:
        run("auto", **kw)  # no prior: the widest candidate's segment first
    cache = e.value.args[0]
    assert cache.k.dtype == cache.v.dtype == jnp.bfloat16

    for method in ("ar", "auto"):
        with pytest.raises(ValueError, match="cache dtype must be a floating dtype .* got 'int8'"):
            run(method, la_LxD=la, cache_dtype="int8")


@pytest.mark.parametrize("per_layer", [False, True])
def test_grow_cache_keeps_what_is_cached(per_layer):
    """``grow_cache`` (``auto`` switching to a layout that needs more slots): every cached key,
    value and history token stays in its slot, the new slots are empty, the lengths and the
    rest of the state are unchanged; for the stacked cache and the per-layer one."""
    params = init_params(CFG, jax.random.PRNGKey(0))
    params = unstack_layers(params) if per_layer else params
    _, state = generate_fixed(
        CFG, params, PROMPTS, max_new_tokens=6, eos_ids=(), max_len=128, return_state=True
    )
    grown = grow_cache(state, max_len=256)
    assert grown.cache.max_len == 256 and grown.hist_BxS.shape == (state.y_B.shape[0], 256)
    for old, new in ((state.cache.k, grown.cache.k), (state.cache.v, grown.cache.v)):
        for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
            np.testing.assert_array_equal(b[..., :128, :], a)
            assert not np.asarray(b[..., 128:, :]).any()
    np.testing.assert_array_equal(grown.hist_BxS[:, :128], state.hist_BxS)
    assert np.asarray(state.cache.k if per_layer else state.cache.k[0]).any()  # (not empty)
    np.testing.assert_array_equal(grown.cache.lengths, state.cache.lengths)
    np.testing.assert_array_equal(grown.out_BxN, state.out_BxN)
