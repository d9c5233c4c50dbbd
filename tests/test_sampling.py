"""Sampling: warps, and the distribution of PaSS samples equals the base model's (chi-square).

The statistical test draws B=32768 continuations of one prompt as a single batch and compares the
empirical distribution of the first 3 new tokens against the exact autoregressive probabilities
(enumerated from the model). Each test uses a false-alarm rate of 1e-3 (p-value threshold); a
deliberately broken acceptance rule (always accept) and a broken residual update (p kept after a
rejection) must be rejected by the same test. The multi-candidate rule of draft trees is also
tested on its own, at one node, with both kinds of children (draws without replacement and
deterministic top-k).
"""

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_la, tiny_params
from scipy import stats

import pass_jax.decode as decode
import pass_jax.generation as generation
import pass_jax.sampling as sampling
from pass_jax.config import ModelConfig, SamplerConfig
from pass_jax.model import forward
from pass_jax.sampling import (
    draw_without_replacement,
    recursive_accept,
    sample_probs,
    verify_tree,
    warp_logits,
    warp_probs,
    without_replacement_proposals,
)

ALPHA = 1e-3
B = 2**15  # a power of two: no padding rows in the batch bucket
N = 3  # tokens of each continuation that are compared
CFG = ModelConfig(vocab_size=6, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32)
PROMPT = [1, 4, 2]


def _params():
    params = tiny_params(CFG, 0)
    # sharpen the random model so distributions are far from uniform
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 15
    return params


def _exact_probs(params, sampler):
    """P(t1, t2, t3 | PROMPT) under the warped model, by enumeration: ``[V, V, V]``."""
    V = CFG.vocab_size
    seqs = np.array([PROMPT + list(s) for s in itertools.product(range(V), repeat=N - 1)])
    pos = np.broadcast_to(np.arange(seqs.shape[1]), seqs.shape)
    logits, _ = forward(CFG, params, jnp.asarray(seqs), jnp.asarray(pos))
    p = np.asarray(warp_probs(logits, sampler), np.float64)  # [V^(N-1), T, V]
    P = len(PROMPT)
    p1 = p[0, P - 1]
    p2 = p[::V, P].reshape(V, V)  # rows indexed by t1 (t2 varies fastest)
    p3 = p[:, P + 1].reshape(V, V, V)
    return p1[:, None, None] * p2[:, :, None] * p3


def _chi2_pvalue(samples_BxN, probs):
    V = CFG.vocab_size
    idx = np.ravel_multi_index(samples_BxN.T, (V,) * N)
    counts = np.bincount(idx, minlength=V**N).astype(float)
    expected = probs.ravel() * len(samples_BxN)
    assert counts[expected == 0].sum() == 0, "a sample has probability 0 under the base model"
    big = expected >= 5  # pool sparse cells so the chi-square approximation holds
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def _samples(params, method, sampler, la=None, seed=0):
    return np.array(_result(params, method, sampler, la, seed).tokens)


def _result(params, method, sampler, la=None, seed=0):
    return generation.generate(
        CFG,
        params,
        [PROMPT] * B,
        max_new_tokens=N,
        method=method,
        la_LxD=la,
        sampler=sampler,
        seed=seed,
        eos_ids=(),
    )


SAMPLERS = [
    SamplerConfig(temperature=1.0),
    SamplerConfig(temperature=0.7, top_k=4),
    SamplerConfig(temperature=1.2, top_p=0.8),
]


def _la():
    return random_la(CFG, 2, 5, 0.5)


@pytest.mark.parametrize(
    "method,sampler",
    [("ar", SAMPLERS[0]), ("ar", SAMPLERS[1])]
    + [(m, s) for m in ("pass", "pass-fused", "tree-2x2") for s in SAMPLERS]
    + [("tree-3", SAMPLERS[0]), ("ctx-2", SAMPLERS[1])]
    + [("tree-2+ctx1", SAMPLERS[2])],
    ids=[
        "ar-t1",
        "ar-t.7k4",
        "pass-t1",
        "pass-t.7k4",
        "pass-t1.2p.8",
        "fused-t1",
        "fused-t.7k4",
        "fused-t1.2p.8",
        "tree2x2-t1",
        "tree2x2-t.7k4",
        "tree2x2-t1.2p.8",
        "tree3-t1",
        "ctx2-t.7k4",
        "tree2ctx1-t1.2p.8",
    ],
)
def test_samples_match_base_distribution(method, sampler):
    """Autoregressive sampling (a check of the test itself), then PaSS, fused PaSS, draft
    trees (several children per node: the recursive rejection rule) and context drafts (copied
    from the prompt and the tokens so far: one-hot proposals), alone and in a tree."""
    params = _params()
    la = None if method.startswith("ctx") else _la()
    res = _result(params, method, sampler, la)
    p = _chi2_pvalue(np.array(res.tokens), _exact_probs(params, sampler))
    assert p > ALPHA, (method, p)
    if "ctx" in method:  # the context drafts were verified, and some accepted
        assert res.accepted_context.sum() > B // 10, res.accepted_context.sum(0)


def _broken_run(monkeypatch, name, broken, method):
    """Chi-square p-value of ``method`` with ``sampling.<name>`` replaced by ``broken``."""
    sampler = SAMPLERS[0]
    params = _params()
    monkeypatch.setattr(sampling, name, broken)
    decode.generate_jit.clear_cache()
    try:
        la = None if method.startswith("ctx") else _la()
        return _chi2_pvalue(_samples(params, method, sampler, la), _exact_probs(params, sampler))
    finally:
        monkeypatch.undo()
        decode.generate_jit.clear_cache()


def test_broken_acceptance_rule_is_detected(monkeypatch):
    """Accepting every draft samples from the LA drafts, not the model: the test must fail."""

    def always_accept(u_BxW, p_BxV, q_BxWxV, tokens_BxW, valid_BxW):
        return jnp.where(valid_BxW[:, 0], 0, -1).astype(jnp.int32), p_BxV

    assert _broken_run(monkeypatch, "recursive_accept", always_accept, "pass-fused") < ALPHA


@pytest.mark.parametrize("method", ["tree-2x2", "ctx-2"])
def test_broken_residual_update_is_detected(monkeypatch, method):
    """Keeping p after a rejected child (instead of norm(max(0, p - q))) over-samples the
    rejected tokens: the tree's and the context drafts' samples must fail the test."""
    assert _broken_run(monkeypatch, "residual_probs", lambda p, q: p, method) < ALPHA


def test_top_k_top_p_never_emit_filtered_tokens():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 50)) * 3
    for sampler in (
        SamplerConfig(1.0, top_k=5),
        SamplerConfig(1.0, top_p=0.3),
        SamplerConfig(0.5, top_k=7, top_p=0.6),
    ):
        allowed = np.isfinite(np.asarray(warp_logits(logits, sampler)))
        if sampler.top_k:
            assert (allowed.sum(-1) <= sampler.top_k).all()
        if sampler.top_p < 1 and not sampler.top_k:  # smallest top set with mass >= top_p
            probs = np.asarray(jax.nn.softmax(logits / sampler.temperature))
            assert ((probs * allowed).sum(-1) >= sampler.top_p - 1e-6).all()
            assert (allowed.sum(-1) < 50).all()
        draws = jax.random.categorical(
            jax.random.PRNGKey(1), warp_logits(logits, sampler), shape=(2000, 4)
        )
        assert allowed[np.arange(4)[None, :], np.asarray(draws)].all()


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 1e-10, 1e-3, 1.0, 1e30])
@pytest.mark.parametrize("jit", [False, True])
def test_warp_probs_finite_and_normalised_at_any_temperature(temperature, jit):
    """Finite probabilities summing to 1 (one-hot at the argmax for tiny T), jitted or not."""
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 50)) * 30
    for sampler in (SamplerConfig(temperature), SamplerConfig(temperature, top_k=5, top_p=0.9)):
        warp = (
            jax.jit(lambda x: warp_probs(x, sampler))  # noqa: B023 (called in this iteration)
            if jit
            else partial(warp_probs, sampler=sampler)
        )
        probs = np.asarray(warp(logits))
        assert np.isfinite(probs).all() and (probs >= 0).all(), (temperature, sampler)
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        if temperature <= 1e-3:
            np.testing.assert_array_equal(probs.argmax(-1), np.argmax(logits, -1))
            np.testing.assert_allclose(probs.max(-1), 1.0, rtol=1e-5)


def _chisquare(counts, probs):
    """Chi-square p-value of counts against probabilities (normalised to the counts' total)."""
    probs = np.asarray(probs, np.float64)
    return stats.chisquare(counts, probs / probs.sum() * counts.sum()).pvalue


def _node_distributions():
    p = np.array([0.05, 0.3, 0.0, 0.25, 0.1, 0.2, 0.1, 0.0])
    q = np.array([0.3, 0.05, 0.2, 0.25, 0.0, 0.05, 0.1, 0.05])
    return jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)


def _node_samples(children: str, n=2**17, W=3, proposals=None):
    """One tree node, n times: W children (draws without replacement from q, or q's top W
    tokens), the recursive rule, then the residual draw when no child is accepted."""
    p, q = _node_distributions()
    k_draw, k_u, k_res = jax.random.split(jax.random.PRNGKey(0), 3)
    q_nxV = jnp.broadcast_to(q, (n, len(q)))
    if children == "without_replacement":
        tokens = draw_without_replacement(k_draw, q_nxV, W)
        q_nxWxV = without_replacement_proposals(q_nxV, tokens)
    else:  # deterministic: the proposal of each child is a point mass
        tokens = jnp.broadcast_to(jax.lax.top_k(q, W)[1], (n, W))
        q_nxWxV = jax.nn.one_hot(tokens, len(q))
    if proposals is not None:
        q_nxWxV = proposals(q_nxV, tokens)
    rank, left = jax.jit(recursive_accept)(
        jax.random.uniform(k_u, (n, W)),
        jnp.broadcast_to(p, q_nxV.shape),
        q_nxWxV,
        tokens,
        jnp.ones((n, W), bool),
    )
    picked = jnp.take_along_axis(tokens, jnp.maximum(rank, 0)[:, None], 1)[:, 0]
    out = jnp.where(rank >= 0, picked, sample_probs(k_res, left, False))
    return np.asarray(out), np.asarray(p, np.float64), np.asarray(rank)


@pytest.mark.parametrize("children", ["without_replacement", "top_k"])
def test_recursive_rule_samples_the_target_at_one_node(children):
    """Whatever the children, the emitted token is distributed as p (chi-square over tokens)."""
    out, p, rank = _node_samples(children)
    counts = np.bincount(out, minlength=len(p))
    assert counts[p == 0].sum() == 0
    assert _chisquare(counts[p > 0], p[p > 0]) > ALPHA
    assert (rank >= 1).mean() > 0.05  # later children do get tried and accepted


def test_recursive_rule_with_iid_proposals_for_distinct_draws_is_detected():
    """Draws without replacement tested as if each came from q itself (the i.i.d. rule): biased,
    and the node-level test sees it."""
    out, p, _ = _node_samples(
        "without_replacement",
        proposals=lambda q, tok: jnp.broadcast_to(q[:, None], (*tok.shape, q.shape[-1])),
    )
    counts = np.bincount(out, minlength=len(p))
    assert _chisquare(counts[p > 0], p[p > 0]) < ALPHA


@pytest.mark.parametrize("support", [0, 5])
def test_draws_without_replacement_follow_plackett_luce(support):
    """P(first = a, second = b) = q(a) q(b) / (1 - q(a)); distinct; none outside the support."""
    q = jnp.asarray([0.4, 0.25, 0.15, 0.1, 0.1, 0.0, 0.0])
    n = 2**16
    draws = np.asarray(
        draw_without_replacement(jax.random.PRNGKey(2), jnp.broadcast_to(q, (n, 7)), 3, support)
    )
    assert (draws[:, 0] != draws[:, 1]).all() and (draws[:, 1] != draws[:, 2]).all()
    assert (draws[:, :2] < 5).all()
    qn = np.asarray(q, np.float64)[:5]
    want = qn[:, None] * qn[None, :] / (1 - qn[:, None])
    np.fill_diagonal(want, 0.0)
    counts = np.zeros((5, 5))
    np.add.at(counts, (draws[:, 0], draws[:, 1]), 1)
    off = ~np.eye(5, dtype=bool)
    assert _chisquare(counts[off], want[off]) > ALPHA


def test_verify_tree_greedy_descends_into_the_argmax_child():
    """Root with children (ranks 0, 1) = nodes 1, 2; node 2 has one child, node 3."""
    children = np.array([[1, 2], [-1, -1], [3, -1], [-1, -1]], np.int32)
    V = 5
    argmax_BxC = jnp.asarray([[4, 0, 1, 2], [3, 0, 2, 2]])  # target argmax after each node, 2 rows
    p = jax.nn.one_hot(argmax_BxC, V)
    drafts = jnp.asarray([[[0, 4], [1, 0]], [[3, 1], [2, 0]]])  # [row, depth, rank]
    draw = np.array([-1, 0, 1, 0])  # node 3 is the rank-0 draw at depth 2
    tree = jnp.asarray([[9, 0, 4, 1], [9, 3, 1, 2]])  # each node's token (root: unused)
    node, ranks, nxt = verify_tree(
        jax.random.PRNGKey(0),
        p,
        children,
        draw,
        tree,
        jnp.ones((2, 4), bool),
        drafts,
        jnp.zeros((2, 2, V)),
        greedy=True,
    )
    # row 0: argmax 4 = rank 1 (node 2), then argmax 1 = node 3's token, then node 3's argmax 2
    # row 1: argmax 3 = rank 0 (node 1), a leaf: the bonus is node 1's argmax 0
    assert node.tolist() == [3, 1] and ranks.tolist() == [[1, 0], [0, -1]]
    assert nxt.tolist() == [2, 0]
