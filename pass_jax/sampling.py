"""Sampling: logit warps (temperature, top-k, top-p), greedy, and speculative acceptance.

Speculative acceptance follows the paper (and Leviathan et al. / Chen et al.): for drafts
d_1..d_D drawn from q_1..q_D, accept d_j with probability min(1, p_j(d_j) / q_j(d_j)) and stop at
the first rejection; on a reject at j draw the correction from norm(max(0, p_j - q_j)); when all
D drafts are accepted draw a bonus token from p_{D+1}. p and q are both the *warped*
distributions. Greedy (temperature 0): accept iff d_j == argmax p_j, the correction is the argmax.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import SamplerConfig

NEG_INF = -jnp.inf


def scale_logits(logits_xV: jax.Array, temperature: float) -> jax.Array:
    """``(logits - max) / temperature``, with the maximal entries exactly 0: finite for any
    temperature > 0.

    Dividing first (``logits / T``) breaks at tiny T: the scaled logits reach ~1e30 (or overflow
    to inf), and inside jit XLA may recompute them in a fused softmax with a different rounding
    than the row maximum it subtracts, so ``exp(x - max)`` overflows and the probabilities become
    inf / inf = NaN (the sampler then drew token 0). Shifting first keeps every entry <= 0 and
    the maxima at exactly 0 however it is recomputed, so a tiny T gives a one-hot (greedy)
    distribution; a T that underflows float32 sends the other entries to -inf.
    """
    max_x1 = jnp.max(logits_xV, axis=-1, keepdims=True)
    shifted_xV = logits_xV - max_x1
    return jnp.where(shifted_xV == 0, 0.0, shifted_xV / jnp.float32(temperature))


def warp_logits(logits_xV: jax.Array, sampler: SamplerConfig) -> jax.Array:
    """Temperature, then top-k, then top-p; filtered entries become -inf. Float32 out.

    Greedy samplers (temperature 0) get the raw logits back (argmax is unaffected by warps).
    Otherwise the result is shifted so that its maximum is exactly 0 (see ``scale_logits``).
    """
    logits = logits_xV.astype(jnp.float32)
    if sampler.greedy:
        return logits
    logits = scale_logits(logits, sampler.temperature)
    V = logits.shape[-1]
    if 0 < sampler.top_k < V:  # keep exactly the k largest (scattered: a threshold compare
        # after top_k is ~20x slower on XLA:CPU, which re-runs top_k inside the elementwise loop)
        vals, idx = jax.lax.top_k(logits, sampler.top_k)
        logits = jnp.put_along_axis(jnp.full_like(logits, NEG_INF), idx, vals, axis=-1,
                                    inplace=False)
    if sampler.top_p < 1.0:
        sorted_desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < sampler.top_p  # the top token always stays
        thresh = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < thresh, NEG_INF, logits)
    return logits


def warp_probs(logits_xV: jax.Array, sampler: SamplerConfig) -> jax.Array:
    """The warped distribution as probabilities (one-hot argmax when greedy)."""
    if sampler.greedy:
        return jax.nn.one_hot(jnp.argmax(logits_xV, axis=-1), logits_xV.shape[-1],
                              dtype=jnp.float32)
    return jax.nn.softmax(warp_logits(logits_xV, sampler), axis=-1)


def support_size(sampler: SamplerConfig, vocab_size: int) -> int:
    """Most non-zero entries a warped distribution can have: top-k when it filters, else 0
    (unknown). Every distribution the decoder samples from (p, q, and the residual
    ``max(0, p - q)``, whose support lies inside p's) has at most this many."""
    return sampler.top_k if 0 < sampler.top_k < vocab_size else 0


def sample_probs(rng: jax.Array, probs_xV: jax.Array, greedy: bool, support: int = 0
                 ) -> jax.Array:
    """Draw one token per row from (unnormalised) probabilities; argmax when greedy. int32.

    ``support`` > 0 promises at most that many non-zero entries per row (``support_size``): the
    draw is then made among the ``support`` largest entries only. That is the same distribution,
    and on a CPU several times cheaper than a Gumbel draw over the whole vocabulary, which was
    the largest single cost of a sampled decode step.
    """
    if greedy:
        return jnp.argmax(probs_xV, axis=-1).astype(jnp.int32)
    if 0 < support < probs_xV.shape[-1]:
        vals_xk, idx_xk = jax.lax.top_k(probs_xV, support)
        pick = jax.random.categorical(rng, jnp.log(vals_xk), axis=-1)
        return jnp.take_along_axis(idx_xk, pick[..., None], axis=-1)[..., 0].astype(jnp.int32)
    return jax.random.categorical(rng, jnp.log(probs_xV), axis=-1).astype(jnp.int32)


def sample_logits(rng: jax.Array, logits_xV: jax.Array, sampler: SamplerConfig) -> jax.Array:
    """Draw one token per row from warped logits (argmax when greedy)."""
    if sampler.greedy:
        return jnp.argmax(logits_xV, axis=-1).astype(jnp.int32)
    return sample_probs(rng, warp_probs(logits_xV, sampler), False,
                        support_size(sampler, logits_xV.shape[-1]))


def speculative_accept(rng: jax.Array, p_BxD1xV: jax.Array, q_BxDxV: jax.Array,
                       drafts_BxD: jax.Array, greedy: bool, support: int = 0):
    """Verify a chain of D drafts per row.

    Args:
      p_BxD1xV: warped target distributions for draft positions 1..D and the bonus position.
      q_BxDxV: warped draft distributions the drafts were drawn from.
      drafts_BxD: the drafts.
      support: at most this many non-zero entries in each p (``support_size``; 0: unknown).
    Returns:
      n_acc_B: accepted drafts per row (0..D); next_B: the correction or bonus token;
      accepted_BxD: which draft positions were accepted (a prefix mask).
    """
    B, D1, V = p_BxD1xV.shape
    D = D1 - 1
    rng_u, rng_c = jax.random.split(rng)
    if D == 0:
        return (jnp.zeros((B,), jnp.int32),
                sample_probs(rng_c, p_BxD1xV[:, 0], greedy, support), jnp.zeros((B, 0), bool))
    p_d_BxD = jnp.take_along_axis(p_BxD1xV[:, :D], drafts_BxD[..., None], axis=-1)[..., 0]
    if greedy:
        ok_BxD = drafts_BxD == jnp.argmax(p_BxD1xV[:, :D], axis=-1)
    else:
        q_d_BxD = jnp.take_along_axis(q_BxDxV, drafts_BxD[..., None], axis=-1)[..., 0]
        u_BxD = jax.random.uniform(rng_u, (B, D))
        ok_BxD = u_BxD * q_d_BxD < p_d_BxD  # u < p/q without dividing; q(d) > 0 as d ~ q
    accepted_BxD = jnp.cumprod(ok_BxD.astype(jnp.int32), axis=1).astype(bool)
    n_acc_B = accepted_BxD.sum(axis=1).astype(jnp.int32)
    p_next_BxV = jnp.take_along_axis(p_BxD1xV, n_acc_B[:, None, None], axis=1)[:, 0]
    if greedy:
        return n_acc_B, jnp.argmax(p_next_BxV, axis=-1).astype(jnp.int32), accepted_BxD
    q_pad_BxD1xV = jnp.concatenate([q_BxDxV, jnp.zeros_like(q_BxDxV[:, :1])], axis=1)
    q_next_BxV = jnp.take_along_axis(q_pad_BxD1xV, n_acc_B[:, None, None], axis=1)[:, 0]
    resid_BxV = jnp.maximum(p_next_BxV - q_next_BxV, 0.0)  # q_next = 0 on the bonus position
    empty_B1 = resid_BxV.sum(-1, keepdims=True) <= 0.0  # p <= q everywhere: fall back to p
    resid_BxV = jnp.where(empty_B1, p_next_BxV, resid_BxV)
    next_B = sample_probs(rng_c, resid_BxV, False, support)
    return n_acc_B, next_B, accepted_BxD
