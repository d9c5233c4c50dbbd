"""Look-ahead training losses: packed == separate passes, the packed mask, training works, base frozen.

Compilation dominates the run time on CPU, so each jitted function is compiled once per module
(fixtures with module scope) and reused.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pass_jax import losses
from pass_jax.config import ModelConfig
from pass_jax.lookahead import init_lookahead
from pass_jax.model import embed_tokens, forward, init_params

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                  max_position=64, unk_token_id=1)
HOT = 5  # the frequent token of the synthetic "runs" corpus
UNK = 1  # never appears in the corpus


def runs_batch(rng, B, N, run=4):
    """Synthetic corpus: runs of `run` equal tokens; a run's token is HOT half the time, else
    uniform over [2, V). A base model learns to copy the current token; LA embeddings can learn
    at least the skewed marginal, the [UNK] initialisation cannot."""
    k_tok, k_off, k_hot = jax.random.split(rng, 3)
    run_tokens = jax.random.randint(k_tok, (B, N // run + 2), 2, CFG.vocab_size)
    run_tokens = jnp.where(jax.random.uniform(k_hot, run_tokens.shape) < 0.5, HOT, run_tokens)
    offset = jax.random.randint(k_off, (B, 1), 0, run)
    idx = (jnp.arange(N)[None, :] + offset) // run
    return jnp.take_along_axis(run_tokens, idx, axis=1).astype(jnp.int32)


@pytest.fixture(scope="module")
def random_params():
    return init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def pretrained():
    """A tiny base model pretrained with lm_loss on the runs corpus; returns (params, losses)."""
    params = init_params(CFG, jax.random.PRNGKey(1))
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, rng):
        tokens = runs_batch(rng, 16, 32)
        (loss, _), grads = jax.value_and_grad(
            lambda p: losses.lm_loss(CFG, p, tokens), has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = opt.init(params)
    history = []
    for i in range(150):
        params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(100 + i))
        history.append(float(loss))
    return params, history


# ---------------------------------------------------------------- (a) packed == separate passes

def literal_means(cfg, params, la_LxD, tokens_BxN, ins_BxM):
    """The paper's input, one batch row per (row, group): x_0..x_p, LA_1..LA_L, then the rest of
    the sequence (causally invisible to the LA rows, it only keeps shapes static). Returns the mean
    CE against the data and the mean KL(p_model || q), p_model from a plain causal pass."""
    tokens = np.asarray(tokens_BxN)
    ins = np.asarray(ins_BxM)
    B, N = tokens.shape
    L = la_LxD.shape[0]
    base_logits_BxNxV, _ = forward(cfg, params, tokens_BxN, jnp.broadcast_to(jnp.arange(N), (B, N)))
    emb_BxNxD = embed_tokens(cfg, params, tokens_BxN)
    rows, la_rows, base_idx, targets = [], [], [], []
    for b in range(B):
        for p in ins[b]:
            k = len(rows)
            rows.append(jnp.concatenate([emb_BxNxD[b, :p + 1], la_LxD.astype(emb_BxNxD.dtype),
                                         emb_BxNxD[b, p + 1:]], axis=0))
            for i in range(1, L + 1):
                if p + 1 + i < N:  # LA_i sits at index p + i and drafts x_{p+1+i}
                    la_rows.append((k, p + i))
                    base_idx.append((b, p + i))
                    targets.append(tokens[b, p + 1 + i])
    embeds_KxTxD = jnp.stack(rows)
    K, T, _ = embeds_KxTxD.shape
    logits_KxTxV, _ = forward(cfg, params, jnp.zeros((K, T), jnp.int32),
                              jnp.broadcast_to(jnp.arange(T), (K, T)), embeds_BxTxD=embeds_KxTxD)
    la_rows, base_idx = np.array(la_rows), np.array(base_idx)
    q_XxV = logits_KxTxV[la_rows[:, 0], la_rows[:, 1]]
    p_XxV = jax.lax.stop_gradient(base_logits_BxNxV[base_idx[:, 0], base_idx[:, 1]])
    ce_X = jax.nn.logsumexp(q_XxV, -1) - q_XxV[np.arange(len(targets)), np.array(targets)]
    logp, logq = jax.nn.log_softmax(p_XxV, -1), jax.nn.log_softmax(q_XxV, -1)
    kl_X = (jnp.exp(logp) * (logp - logq)).sum(-1)
    return ce_X.mean(), kl_X.mean()


def test_packed_equals_separate_single_insertion_passes(random_params):
    B, N, L = 2, 16, 3
    tokens = jax.random.randint(jax.random.PRNGKey(2), (B, N), 0, CFG.vocab_size)
    # last groups have targets past the end (masked): p=13 keeps LA_1 only, p=12 LA_1 and LA_2
    ins = jnp.array([[0, 5, 13], [2, 7, 12]], jnp.int32)
    la = jax.random.normal(jax.random.PRNGKey(3), (L, CFG.d_model))

    @jax.jit
    def packed(la):
        (ce, m), g_ce = jax.value_and_grad(
            lambda a: losses.la_loss(CFG, random_params, a, tokens, ins, "ce"), has_aux=True)(la)
        kl, g_kl = jax.value_and_grad(
            lambda a: losses.la_loss(CFG, random_params, a, tokens, ins, "kl")[0])(la)
        return ce, kl, g_ce, g_kl, m["num_targets"]

    @jax.jit
    def separate(la):
        def both(a):
            ce_kl = jnp.stack(literal_means(CFG, random_params, a, tokens, ins))
            return ce_kl, ce_kl
        jac_2xLxD, (ce, kl) = jax.jacrev(both, has_aux=True)(la)
        return ce, kl, jac_2xLxD[0], jac_2xLxD[1]

    ce_p, kl_p, gce_p, gkl_p, n = packed(la)
    ce_s, kl_s, gce_s, gkl_s = separate(la)
    assert int(n) == 2 * 3 * L - 2 - 1
    np.testing.assert_allclose(ce_p, ce_s, atol=1e-5)
    np.testing.assert_allclose(kl_p, kl_s, atol=1e-5)
    np.testing.assert_allclose(gce_p, gce_s, atol=1e-5)
    np.testing.assert_allclose(gkl_p, gkl_s, atol=1e-5)
    assert float(jnp.abs(gce_p).max()) > 1e-3  # the comparison is not vacuous
