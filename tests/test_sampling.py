"""Sampling: warps, and the distribution of PaSS samples equals the base model's (chi-square).

The statistical test draws N=32768 continuations of one prompt as a single batch and compares the
empirical distribution of the first 3 new tokens against the exact autoregressive probabilities
(enumerated from the model). Each test uses a false-alarm rate of 1e-3 (p-value threshold); a
deliberately broken acceptance rule (always accept) must be rejected by the same test.
"""
import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import pass_jax.decode as decode
from pass_jax.config import ModelConfig, SamplerConfig
from pass_jax.model import forward, init_params
from pass_jax.sampling import speculative_accept, warp_logits, warp_probs

ALPHA = 1e-3
N = 2 ** 15  # a power of two: no padding rows in the batch bucket
K = 3  # tokens of each continuation that are compared
CFG = ModelConfig(vocab_size=6, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32)
PROMPT = [1, 4, 2]


def _params():
    params = init_params(CFG, jax.random.PRNGKey(0))
    # sharpen the random model so distributions are far from uniform
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 15
    return params


def _exact_probs(params, sampler):
    """P(t1, t2, t3 | PROMPT) under the warped model, by enumeration: ``[V, V, V]``."""
    V = CFG.vocab_size
    seqs = np.array([PROMPT + list(s) for s in itertools.product(range(V), repeat=K - 1)])
    pos = np.broadcast_to(np.arange(seqs.shape[1]), seqs.shape)
    logits, _ = forward(CFG, params, jnp.asarray(seqs), jnp.asarray(pos))
    p = np.asarray(warp_probs(logits, sampler), np.float64)  # [V^(K-1), T, V]
    P = len(PROMPT)
    p1 = p[0, P - 1]
    p2 = p[::V, P].reshape(V, V)  # rows indexed by t1 (t2 varies fastest)
    p3 = p[:, P + 1].reshape(V, V, V)
    return p1[:, None, None] * p2[:, :, None] * p3


def _chi2_pvalue(samples_NxK, probs):
    V = CFG.vocab_size
    idx = np.ravel_multi_index(samples_NxK.T, (V,) * K)
    counts = np.bincount(idx, minlength=V ** K).astype(float)
    expected = probs.ravel() * len(samples_NxK)
    assert counts[expected == 0].sum() == 0, "a sample has probability 0 under the base model"
    big = expected >= 5  # pool sparse cells so the chi-square approximation holds
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def _samples(params, method, sampler, la=None, seed=0):
    res = decode.generate(CFG, params, [PROMPT] * N, max_new_tokens=K, method=method, la_LxD=la,
                          sampler=sampler, seed=seed, eos_ids=())
    return np.array(res.tokens)


SAMPLERS = [SamplerConfig(temperature=1.0), SamplerConfig(temperature=0.7, top_k=4),
            SamplerConfig(temperature=1.2, top_p=0.8)]


@pytest.mark.parametrize("method,sampler", [("ar", SAMPLERS[0]), ("ar", SAMPLERS[1])] + [
    (m, s) for m in ("pass", "pass-fused") for s in SAMPLERS],
    ids=["ar-t1", "ar-t.7k4", "pass-t1", "pass-t.7k4", "pass-t1.2p.8", "fused-t1", "fused-t.7k4",
         "fused-t1.2p.8"])
def test_samples_match_base_distribution(method, sampler):
    """Autoregressive sampling (a check of the test itself), then PaSS and fused PaSS."""
    params = _params()
    la = 0.5 * jax.random.normal(jax.random.PRNGKey(5), (2, CFG.d_model))
    p = _chi2_pvalue(_samples(params, method, sampler, la), _exact_probs(params, sampler))
    assert p > ALPHA, (method, p)


def test_broken_acceptance_rule_is_detected(monkeypatch):
    """Accepting every draft samples from the LA drafts, not the model: the test must fail."""
    sampler = SAMPLERS[0]
    params = _params()
    probs = _exact_probs(params, sampler)
    la = 0.5 * jax.random.normal(jax.random.PRNGKey(5), (2, CFG.d_model))

    def always_accept(rng, p_BxD1xV, q_BxDxV, drafts_BxD, greedy, support=0):
        n, nxt, acc = speculative_accept(rng, p_BxD1xV, q_BxDxV, drafts_BxD, greedy, support)
        D = drafts_BxD.shape[1]
        if D == 0:
            return n, nxt, acc
        bonus = jax.random.categorical(rng, jnp.log(p_BxD1xV[:, D]), axis=-1).astype(jnp.int32)
        return jnp.full_like(n, D), bonus, jnp.ones_like(acc)

    monkeypatch.setattr(decode, "speculative_accept", always_accept)
    decode.generate_jit.clear_cache()
    try:
        p = _chi2_pvalue(_samples(params, "pass-fused", sampler, la), probs)
    finally:
        decode.generate_jit.clear_cache()
    assert p < ALPHA


def test_top_k_top_p_never_emit_filtered_tokens():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 50)) * 3
    for sampler in (SamplerConfig(1.0, top_k=5), SamplerConfig(1.0, top_p=0.3),
                    SamplerConfig(0.5, top_k=7, top_p=0.6)):
        allowed = np.isfinite(np.asarray(warp_logits(logits, sampler)))
        if sampler.top_k:
            assert (allowed.sum(-1) <= sampler.top_k).all()
        if sampler.top_p < 1 and not sampler.top_k:  # smallest top set with mass >= top_p
            probs = np.asarray(jax.nn.softmax(logits / sampler.temperature))
            assert ((probs * allowed).sum(-1) >= sampler.top_p - 1e-6).all()
            assert (allowed.sum(-1) < 50).all()
        draws = jax.random.categorical(jax.random.PRNGKey(1), warp_logits(logits, sampler),
                                       shape=(2000, 4))
        assert allowed[np.arange(4)[None, :], np.asarray(draws)].all()


def test_speculative_accept_greedy_and_residual():
    p = jnp.asarray([[[0.1, 0.6, 0.1, 0.1, 0.1], [0.2, 0.2, 0.5, 0.05, 0.05],
                      [0.7, 0.1, 0.1, 0.05, 0.05]]])
    q = jnp.asarray([[[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]]])
    drafts = jnp.asarray([[1, 3]])
    n, nxt, acc = speculative_accept(jax.random.PRNGKey(0), p, q, drafts, greedy=True)
    assert int(n[0]) == 1 and int(nxt[0]) == 2 and acc.tolist() == [[True, False]]
    # sampling: d_2=3 has p=0.05 vs q=1 -> accepted w.p. 0.05; the residual excludes token 3
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    batch = lambda x: jnp.broadcast_to(x, (4000,) + x.shape[1:])
    n, nxt, _ = jax.vmap(lambda k, pp, qq, dd: speculative_accept(k, pp[None], qq[None],
                                                                  dd[None], False))(
        keys, batch(p), batch(q), batch(drafts))
    n, nxt = np.asarray(n)[:, 0], np.asarray(nxt)[:, 0]
    assert abs((n == 2).mean() - 0.6 * 0.05) < 0.015  # accept d_1 w.p. 0.6, then d_2 w.p. 0.05
    assert not np.any(nxt[n == 1] == 3)
    assert not np.any(nxt[n == 0] == 1)


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 1e-10, 1e-3, 1.0, 1e30])
@pytest.mark.parametrize("jit", [False, True])
def test_warp_probs_finite_and_normalised_at_any_temperature(temperature, jit):
    """Finite probabilities summing to 1 (one-hot at the argmax for tiny T), jitted or not."""
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 50)) * 30
    for sampler in (SamplerConfig(temperature), SamplerConfig(temperature, top_k=5, top_p=0.9)):
        warp = jax.jit(lambda x: warp_probs(x, sampler)) if jit else partial(warp_probs,
                                                                              sampler=sampler)
        probs = np.asarray(warp(logits))
        assert np.isfinite(probs).all() and (probs >= 0).all(), (temperature, sampler)
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        if temperature <= 1e-3:
            np.testing.assert_array_equal(probs.argmax(-1), np.argmax(logits, -1))
            np.testing.assert_allclose(probs.max(-1), 1.0, rtol=1e-5)
