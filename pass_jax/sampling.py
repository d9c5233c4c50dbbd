"""Sampling: logit warps (temperature, top-k, top-p), greedy, and speculative acceptance.

Speculative acceptance follows the paper (and Leviathan et al. / Chen et al.): for drafts
d_1..d_J drawn from q_1..q_J, accept d_j with probability min(1, p_j(d_j) / q_j(d_j)) and stop at
the first rejection; on a reject at j draw the correction from norm(max(0, p_j - q_j)); when all
J drafts are accepted draw a bonus token from p_{J+1}. p and q are both the *warped*
distributions. Greedy (temperature 0): accept iff d_j == argmax p_j, the correction is the argmax.

A draft tree generalises the chain: the children of a node at depth j-1 are ordered draws
without replacement from q_j, then context drafts (deterministic tokens copied from the
sequence, proposal one-hot), tried in turn with the recursive rejection rule
(``recursive_accept``); ``verify_tree`` walks the tree per row. A chain is the case of one child.

Shape letters: see ``pass_jax/__init__.py``; ``_xV``: any leading dims, then the vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .config import SamplerConfig

NEG_INF = -jnp.inf


def scale_logits(logits_xV: jax.Array, temperature: float) -> jax.Array:
    """``(logits - max) / temperature``, with the maximal entries exactly 0: finite for any
    temperature > 0.

    Dividing first (``logits / temperature``) breaks at a tiny temperature: the scaled logits
    reach ~1e30 (or overflow to inf), and inside jit XLA may recompute them in a fused softmax
    with a different rounding than the row maximum it subtracts, so ``exp(x - max)`` overflows
    and the probabilities become inf / inf = NaN (the sampler then drew token 0). Shifting first
    keeps every entry <= 0 and the maxima at exactly 0 however it is recomputed, so a tiny
    temperature gives a one-hot (greedy) distribution; one that underflows float32 sends the
    other entries to -inf.
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
        # after top_k is much slower on XLA:CPU, which re-runs top_k inside the elementwise loop)
        vals, idx = jax.lax.top_k(logits, sampler.top_k)
        logits = jnp.put_along_axis(
            jnp.full_like(logits, NEG_INF), idx, vals, axis=-1, inplace=False
        )
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
        return jax.nn.one_hot(
            jnp.argmax(logits_xV, axis=-1), logits_xV.shape[-1], dtype=jnp.float32
        )
    return jax.nn.softmax(warp_logits(logits_xV, sampler), axis=-1)


def support_size(sampler: SamplerConfig, vocab_size: int) -> int:
    """Most non-zero entries a warped distribution can have: top-k when it filters, else 0
    (unknown). Every distribution the decoder samples from (p, q, and the residual
    ``max(0, p - q)``, whose support lies inside p's) has at most this many."""
    return sampler.top_k if 0 < sampler.top_k < vocab_size else 0


def sample_probs(rng: jax.Array, probs_xV: jax.Array, greedy: bool, support: int = 0) -> jax.Array:
    """Draw one token per row from (unnormalised) probabilities; argmax when greedy. int32.

    ``support`` > 0 promises at most that many non-zero entries per row (``support_size``): the
    draw is then made among the ``support`` largest entries only. That is the same distribution,
    and on a CPU cheaper than a Gumbel draw over the whole vocabulary.
    """
    if greedy:
        return jnp.argmax(probs_xV, axis=-1).astype(jnp.int32)
    if 0 < support < probs_xV.shape[-1]:
        vals_xs, idx_xs = jax.lax.top_k(probs_xV, support)
        pick = jax.random.categorical(rng, jnp.log(vals_xs), axis=-1)
        return jnp.take_along_axis(idx_xs, pick[..., None], axis=-1)[..., 0].astype(jnp.int32)
    return jax.random.categorical(rng, jnp.log(probs_xV), axis=-1).astype(jnp.int32)


def sample_logits(rng: jax.Array, logits_xV: jax.Array, sampler: SamplerConfig) -> jax.Array:
    """Draw one token per row from warped logits (argmax when greedy)."""
    if sampler.greedy:
        return jnp.argmax(logits_xV, axis=-1).astype(jnp.int32)
    return sample_probs(
        rng, warp_probs(logits_xV, sampler), False, support_size(sampler, logits_xV.shape[-1])
    )


def draw_without_replacement(
    rng: jax.Array, probs_xV: jax.Array, k: int, support: int = 0
) -> jax.Array:
    """An ordered sample of ``k`` distinct tokens per row without replacement (Gumbel-top-k:
    the j-th is drawn from ``probs`` with the first j-1 removed, renormalised), int32 ``[..., k]``.

    k = 1 is one ordinary draw. Draws past the support (entries of probability 0) come last and
    are meaningless; callers drop them. ``support`` as in ``sample_probs``.
    """
    V = probs_xV.shape[-1]
    if k <= support < V:
        vals_xs, idx_xs = jax.lax.top_k(probs_xV, support)
        _, pick_xk = jax.lax.top_k(jnp.log(vals_xs) + jax.random.gumbel(rng, vals_xs.shape), k)
        return jnp.take_along_axis(idx_xs, pick_xk, axis=-1).astype(jnp.int32)
    _, idx_xk = jax.lax.top_k(jnp.log(probs_xV) + jax.random.gumbel(rng, probs_xV.shape), k)
    return idx_xk.astype(jnp.int32)


def without_replacement_proposals(q_BxV: jax.Array, tokens_BxW: jax.Array) -> jax.Array:
    """The distribution each of W ordered draws without replacement came from, ``[B, W, V]``:
    q with the earlier draws removed, renormalised (0 once nothing is left)."""
    B, W = tokens_BxW.shape
    if W == 1:
        return q_BxV[:, None]
    seen_BxWxV = jnp.cumsum(jax.nn.one_hot(tokens_BxW, q_BxV.shape[-1], dtype=bool), axis=1)
    earlier_BxWxV = (
        jnp.concatenate([jnp.zeros_like(seen_BxWxV[:, :1]), seen_BxWxV[:, :-1]], axis=1) > 0
    )
    left_BxWxV = jnp.where(earlier_BxWxV, 0.0, q_BxV[:, None, :])
    mass_BxWx1 = left_BxWxV.sum(-1, keepdims=True)
    return jnp.where(mass_BxWx1 > 0, left_BxWxV / jnp.where(mass_BxWx1 > 0, mass_BxWx1, 1.0), 0.0)


def residual_probs(p_BxV: jax.Array, q_BxV: jax.Array) -> jax.Array:
    """What is left of p after a draft from q is rejected: norm(max(0, p - q)); p itself where
    that is empty (p <= q everywhere, so a rejection had probability 0)."""
    resid_BxV = jnp.maximum(p_BxV - q_BxV, 0.0)
    mass_Bx1 = resid_BxV.sum(-1, keepdims=True)
    return jnp.where(mass_Bx1 > 0, resid_BxV / jnp.where(mass_Bx1 > 0, mass_Bx1, 1.0), p_BxV)


def recursive_accept(
    u_BxW: jax.Array,
    p_BxV: jax.Array,
    q_BxWxV: jax.Array,
    tokens_BxW: jax.Array,
    valid_BxW: jax.Array,
):
    """Multi-candidate speculative sampling at one tree node: try the children in turn.

    The recursive rejection rule of SpecInfer (Miao et al. 2024, arXiv 2305.09781, "multi-step
    speculative sampling") and EAGLE (Li et al. 2024, arXiv 2401.15077), with the proposals of
    sampling without replacement from Recursive Speculative Decoding (Jeon et al. 2024, arXiv
    2402.14160): child c_r, drawn from q_r, is accepted with probability min(1, p(c_r) / q_r(c_r))
    (``u_r q_r(c_r) < p(c_r)``); on a rejection p <- norm(max(0, p - q_r)) and the next child
    is tried; if none is accepted the caller samples the returned p. The emitted token is then
    distributed as p exactly, whatever the q_r, as long as each c_r ~ q_r given the tokens before
    it (deterministic children: q_r = one_hot(c_r), and the rule is "draw x ~ p, descend if x is
    a child").

    Args:
      u_BxW: uniforms, one per child.
      p_BxV: the target distribution after the node.
      q_BxWxV: the proposal each child was drawn from (``without_replacement_proposals``).
      tokens_BxW: the children's tokens, in the order they are tried.
      valid_BxW: which children exist (a prefix of each row).
    Returns:
      rank_B: the accepted child (-1: none); p_BxV: what is left of p (p itself after an
      acceptance, the residual after the rejections otherwise).
    """
    B, W = tokens_BxW.shape
    rank_B = jnp.full((B,), -1, jnp.int32)
    for r in range(W):
        c_Bx1 = tokens_BxW[:, r, None]
        try_B = valid_BxW[:, r] & (rank_B < 0)
        q_BxV = q_BxWxV[:, r]
        ok_B = try_B & (
            u_BxW[:, r] * jnp.take_along_axis(q_BxV, c_Bx1, -1)[:, 0]
            < jnp.take_along_axis(p_BxV, c_Bx1, -1)[:, 0]
        )
        rank_B = jnp.where(ok_B, r, rank_B)
        p_BxV = jnp.where((try_B & ~ok_B)[:, None], residual_probs(p_BxV, q_BxV), p_BxV)
    return rank_B, p_BxV


def node_depths(children_CxW) -> np.ndarray:
    """Depth of every node ``[C]`` of the tree a static children table (``Layout.children``)
    describes."""
    depth = np.zeros(len(children_CxW), np.int32)
    for n, kids in enumerate(np.asarray(children_CxW)):
        depth[kids[kids >= 0]] = depth[n] + 1
    return depth


def verify_tree(
    rng: jax.Array,
    p_BxCxV: jax.Array,
    children_CxW,
    draw_C,
    tree_BxC: jax.Array,
    valid_BxC: jax.Array,
    drafts_BxLxW: jax.Array,
    q_BxLxV: jax.Array,
    greedy: bool,
    support: int = 0,
):
    """Verify a draft tree per row: walk down from the root, one depth at a time.

    Greedy: descend into the child equal to the target's argmax; the next token is the argmax
    after the last accepted node. Sampling: ``recursive_accept`` at each node; the next token is
    drawn from what is left of p after the last accepted node (the correction), or from p after a
    leaf (the bonus). A chain (W = 1) is the paper's speculative sampling.

    Args:
      p_BxCxV: warped target distributions after each tree node (the root and the drafts).
      children_CxW: static ``Layout.children``: node n's children in the order they are tried,
        -1 past the last.
      draw_C: static ``Layout.draw``: r for a node that is the (r+1)-th draw from q_j (j its
        depth), -1 for a context draft (a deterministic token: its proposal is one-hot).
      tree_BxC: every tree node's token (``tree_BxC[:, 0]`` the root y).
      valid_BxC: which nodes exist (a context draft without a match does not).
      drafts_BxLxW: per depth j, ordered draws without replacement from q_j (greedy: the top
        tokens): the draws of the tree's DRAFT nodes.
      q_BxLxV: the warped draft distributions q_j they were drawn from.
      support: at most this many non-zero entries in each p (``support_size``; 0: unknown).
    Returns:
      node_B: the last accepted tree node (0: none); ranks_BxJ: the child accepted at each depth
      (-1 from the first depth where nothing was); next_B: the correction or bonus token.
    """
    children_CxW, draw_C = np.asarray(children_CxW), np.asarray(draw_C)
    children = jnp.asarray(children_CxW)
    W = children_CxW.shape[1]
    B, V = p_BxCxV.shape[0], p_BxCxV.shape[-1]
    depth_C = node_depths(children_CxW)
    J = int(depth_C.max())
    rng_u, rng_c = jax.random.split(rng)
    u_BxJxW = jax.random.uniform(rng_u, (B, max(J, 1), W))
    node_B = jnp.zeros((B,), jnp.int32)
    alive_B = jnp.ones((B,), bool)
    p_end_BxV = p_BxCxV[:, 0]
    ranks = []
    for j in range(J):
        p_BxV = jnp.take_along_axis(p_BxCxV, node_B[:, None, None], axis=1)[:, 0]
        kids_BxW = children[node_B]
        safe_BxW = jnp.maximum(kids_BxW, 0)
        tokens_BxW = jnp.take_along_axis(tree_BxC, safe_BxW, axis=1)
        valid_BxW = (
            alive_B[:, None] & (kids_BxW >= 0) & jnp.take_along_axis(valid_BxC, safe_BxW, axis=1)
        )
        if greedy:
            hit_BxW = valid_BxW & (tokens_BxW == jnp.argmax(p_BxV, -1)[:, None])
            rank_B = jnp.where(hit_BxW.any(1), jnp.argmax(hit_BxW, 1), -1).astype(jnp.int32)
            left_BxV = p_BxV
        else:
            draw_BxW = jnp.asarray(draw_C)[safe_BxW]
            q_BxWxV = jax.nn.one_hot(tokens_BxW, V, dtype=jnp.float32)  # context drafts
            R = int(draw_C[depth_C == j + 1].max(initial=-1)) + 1  # draws at this depth
            if R:
                wr_BxRxV = without_replacement_proposals(q_BxLxV[:, j], drafts_BxLxW[:, j, :R])
                drawn_BxWxV = wr_BxRxV[jnp.arange(B)[:, None], jnp.maximum(draw_BxW, 0)]
                q_BxWxV = jnp.where((draw_BxW >= 0)[..., None], drawn_BxWxV, q_BxWxV)
            valid_BxW &= jnp.take_along_axis(q_BxWxV, tokens_BxW[..., None], -1)[..., 0] > 0
            rank_B, left_BxV = recursive_accept(
                u_BxJxW[:, j], p_BxV, q_BxWxV, tokens_BxW, valid_BxW
            )
        stop_B = alive_B & (rank_B < 0)
        p_end_BxV = jnp.where(stop_B[:, None], left_BxV, p_end_BxV)
        alive_B = alive_B & ~stop_B
        child_B = jnp.take_along_axis(kids_BxW, jnp.maximum(rank_B, 0)[:, None], 1)[:, 0]
        node_B = jnp.where(rank_B >= 0, child_B, node_B)
        ranks.append(rank_B)
    p_leaf_BxV = jnp.take_along_axis(p_BxCxV, node_B[:, None, None], axis=1)[:, 0]
    p_end_BxV = jnp.where(alive_B[:, None], p_leaf_BxV, p_end_BxV)
    next_B = sample_probs(rng_c, p_end_BxV, greedy, support)
    ranks_BxJ = jnp.stack(ranks, 1) if ranks else jnp.zeros((B, 0), jnp.int32)
    return node_B, ranks_BxJ, next_B
