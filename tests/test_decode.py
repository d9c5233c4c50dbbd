"""Decoding: greedy losslessness, step invariants, compilation count, streaming, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax.cache import init_cache
from pass_jax.config import ModelConfig, SamplerConfig
from pass_jax.decode import (DecodeSpec, eos_array, generate, generate_jit, layout_call,
                              pass_step, prefill, prepare_batch)
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
                out = generate(CFG, params, PROMPTS, max_new_tokens=24, method=method,
                               la_LxD=_la(L, la_seed, params), eos_ids=eos)
                assert out.tokens == ar.tokens, (method, L, seed)
                accepted += int(out.accepted.sum())
    assert accepted > 0, "no draft was ever accepted: the acceptance path went untested"


def test_per_layer_params_decode_like_stacked():
    """``unstack_layers`` params (a loop over layers, a per-layer cache updated in place) give
    the same tokens, calls and acceptances as the stacked, scanned params (every method sampled,
    fused greedy); the two forms convert back and forth exactly."""
    params = _params(5)
    per_layer = unstack_layers(params)
    assert sorted(per_layer) == ["embed", "final_norm", "layers_0", "layers_1", "lm_head"]
    jax.tree.map(np.testing.assert_array_equal, stack_layers(per_layer), params)
    la = _la(3, 1, params)
    accepted = 0
    runs = [(SamplerConfig(0.9, top_k=8), m) for m in ("ar", "pass", "pass-fused")]
    for sampler, method in runs + [(SamplerConfig(), "pass-fused")]:
        kw = dict(max_new_tokens=20, method=method, la_LxD=la, sampler=sampler, eos_ids=(),
                  seed=4)
        a = generate(CFG, params, PROMPTS, **kw)
        b, state = generate(CFG, per_layer, PROMPTS, return_state=True, **kw)
        assert b.tokens == a.tokens and b.calls == a.calls, (method, sampler)
        np.testing.assert_array_equal(b.accepted, a.accepted)
        accepted += int(b.accepted.sum())
    assert accepted > 0
    assert isinstance(state.cache.k, tuple) and len(state.cache.k) == CFG.n_layers
    with pytest.raises(ValueError, match="per-layer cache"):
        forward(CFG, params, jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32),
                init_cache(CFG, 1, 8, per_layer=True))
    with pytest.raises(ValueError, match="per-layer cache"):
        forward(CFG, per_layer, jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32),
                init_cache(CFG, 1, 8))


def _run_steps(spec, params, la, prompts, steps):
    """Prefill + bootstrap, then ``steps`` jitted pass_steps; returns n_B after each step."""
    p, lens, active = map(jnp.asarray, prepare_batch(prompts, spec.cfg.vocab_size))
    state = prefill(spec, params, p, lens, active, eos_array(()),
                    init_cache(spec.cfg, p.shape[0], 256), jax.random.PRNGKey(0))
    for lay in spec.schedule.bootstrap:
        state = layout_call(spec, lay, params, la, state)
    step = jax.jit(pass_step, static_argnums=0)
    counts = [np.asarray(state.n_B)]
    for _ in range(steps):
        state = step(spec, params, la, state)
        counts.append(np.asarray(state.n_B))
    return np.stack(counts)[:, :len(prompts)]


@pytest.mark.parametrize("method,min_per_step", [("pass", 2), ("pass-fused", 1)])
def test_tokens_per_step_lower_bound(method, min_per_step):
    L = 3
    params = _params(7)
    spec = DecodeSpec(CFG, make_schedule(method, L), SamplerConfig(temperature=1.0), 200)
    counts = _run_steps(spec, params, _la(L, 1, params), PROMPTS, 6)
    per_step = np.diff(counts, axis=0)
    assert (per_step >= min_per_step).all() and (per_step <= L + min_per_step).all()


@pytest.mark.parametrize("method,per_step", [("pass", 4 + 2), ("pass-fused", 4 + 1)])
def test_oracle_drafts_give_maximal_tokens_per_step(method, per_step):
    """With a zeroed final norm all logits are equal: every draft (argmax 0) is right."""
    L = 4
    params = _params(3)
    params = {**params, "final_norm": {"scale": jnp.zeros_like(params["final_norm"]["scale"])}}
    spec = DecodeSpec(CFG, make_schedule(method, L), SamplerConfig(), 200)
    counts = _run_steps(spec, params, _la(L, 0), PROMPTS, 5)
    assert (np.diff(counts, axis=0) == per_step).all()
    res = generate(CFG, params, PROMPTS, max_new_tokens=41, method=method, la_LxD=_la(L, 0))
    assert all(len(t) == 41 for t in res.tokens)
    assert (res.accepted == res.accepted[:, :1]).all() and res.accepted.min() > 0


def test_step_compiles_once_per_bucket():
    params = _params(0)
    la = _la(2, 0)
    kw = dict(max_new_tokens=10, method="pass-fused", la_LxD=la,
              sampler=SamplerConfig(temperature=0.7, top_k=5))
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
    state = jax.jit(prefill, static_argnums=0)(spec, params, p, lens, active, eos_array(()),
                                               init_cache(CFG, p.shape[0], 64),
                                               jax.random.PRNGKey(3))
    state = jax.jit(layout_call, static_argnums=(0, 1))(spec, spec.schedule.bootstrap[0],
                                                         params, la, state)
    jitted = jax.jit(pass_step, static_argnums=0)(spec, params, la, state)
    with jax.disable_jit():
        eager = pass_step(spec, params, la, state)
    for name in ("out_BxN", "n_B", "drafts_BxLxW", "y_B", "accepted_BxLxW"):
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
    res = generate(CFG, params, PROMPTS[:1], max_new_tokens=12, method="pass-fused",
                   la_LxD=_la(2, 4), stream=lambda out, n: seen.append(out[0, :n[0]].tolist()))
    assert len(seen) >= 3
    assert all(seen[i + 1][:len(seen[i])] == seen[i] for i in range(len(seen) - 1))
    assert seen[-1] == res.tokens[0]


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
