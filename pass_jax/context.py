"""Context drafts: tokens copied from the sequence itself (prompt-lookup decoding).

The draft after a key (the last up to ``NGRAM`` tokens of a path) is what followed the latest
earlier occurrence of the longest suffix of the key that occurred before (Saxena 2023,
"Prompt Lookup Decoding"; transformers' ``prompt_lookup_num_tokens``), read from ``hist_BxS``:
the prompt and every token emitted so far, at their positions. Code and chat answers repeat
names and phrases from their prompt and from themselves, and a look-ahead token cannot see the
draft before it; a lookup keyed on the draft can (``results/smollm2/trees``).

A context draft is a deterministic function of the tokens before it, so speculative sampling
verifies it with the proposal ``one_hot(draft)``: the output distribution stays the model's.

Shape letters: see ``pass_jax/__init__.py``; here U is the context chains of one call and ``m``
the drafts of each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NGRAM = 3  # the longest key; shorter suffixes are tried when it never occurred


def lookup(hist_BxS: jax.Array, end_B: jax.Array, key_BxUx3: jax.Array, valid_BxUx3, m: int):
    """Up to ``m`` tokens that followed the latest earlier occurrence of each key's longest
    suffix (3, 2, then 1 tokens) among the known tokens ``hist_BxS[b, :end_B[b]]``.

    Args:
      hist_BxS: tokens by position (the prompt, then the emitted tokens).
      end_B: known tokens per row.
      key_BxUx3: U keys of 3 tokens, oldest first.
      valid_BxUx3: which key tokens exist (a short sequence has fewer than 3 before the path).
      m: tokens to copy after the match.
    Returns:
      tokens_BxUxm (int32) and valid_BxUxm: the copied tokens and which of them exist (none
      without a match; fewer than m when the match is close to the end of the known tokens).
    """
    B, S = hist_BxS.shape
    s_S = jnp.arange(S, dtype=jnp.int32)
    # a match ends at s: the key's last n tokens equal hist[s-n+1 .. s]; its continuation
    # starts at s + 1, which must be known
    match_BxUxS = (s_S[None, :] <= end_B[:, None] - 2)[:, None, :]
    best_BxU = jnp.full(key_BxUx3.shape[:2], -1, jnp.int32)
    for n in range(1, NGRAM + 1):  # longer suffixes replace shorter ones when they occur
        k = n - 1  # compare hist[s - k] with the key's k-th token from the end
        shifted_BxS = jnp.pad(hist_BxS, ((0, 0), (k, 0)), constant_values=-1)[:, :S]
        match_BxUxS &= (shifted_BxS[:, None, :] == key_BxUx3[:, :, 2 - k, None]) & valid_BxUx3[
            :, :, 2 - k, None
        ]
        last_BxU = jnp.max(jnp.where(match_BxUxS, s_S, -1), axis=-1)
        best_BxU = jnp.where(last_BxU >= 0, last_BxU, best_BxU)
    idx_BxUxm = best_BxU[..., None] + 1 + jnp.arange(m, dtype=jnp.int32)
    valid_BxUxm = (best_BxU[..., None] >= 0) & (idx_BxUxm < end_B[:, None, None])
    U = key_BxUx3.shape[1]
    tokens_BxUxm = jnp.take_along_axis(
        hist_BxS, jnp.clip(idx_BxUxm, 0, S - 1).reshape(B, U * m), axis=1
    ).reshape(B, U, m)
    return tokens_BxUxm, valid_BxUxm


def context_drafts(layout, hist_BxS: jax.Array, end_B: jax.Array, tree_BxC: jax.Array):
    """``tree_BxC`` (the root y and the DRAFT tokens of ``layout``'s tree) with the context
    drafts filled in, and which tree nodes exist ``[B, C]`` (a context draft without a match
    does not). ``hist_BxS[b, :end_B[b]]`` is the sequence up to and including y."""
    B, C = tree_BxC.shape
    valid_BxC = jnp.ones((B, C), bool)
    anchors_U, chains_Uxm = layout.context_chains
    if not len(anchors_U):
        return tree_BxC, valid_BxC
    query_Ux3 = layout.context_query  # >= 0: a tree node; -b: b tokens before y
    back_BxUx3 = end_B[:, None, None] - 1 + jnp.minimum(query_Ux3, 0)[None]
    from_hist_BxUx3 = jnp.take_along_axis(
        hist_BxS, jnp.maximum(back_BxUx3, 0).reshape(B, -1), axis=1
    ).reshape(back_BxUx3.shape)
    from_tree_BxUx3 = tree_BxC[:, jnp.maximum(query_Ux3, 0)]
    key_BxUx3 = jnp.where(query_Ux3[None] >= 0, from_tree_BxUx3, from_hist_BxUx3)
    key_valid_BxUx3 = (query_Ux3[None] >= 0) | (back_BxUx3 >= 0)
    tokens_BxUxm, found_BxUxm = lookup(
        hist_BxS, end_B, key_BxUx3, key_valid_BxUx3, chains_Uxm.shape[1]
    )
    # a chain node exists when it and every node above it in the chain were found
    found_BxUxm = jnp.cumprod(found_BxUxm, axis=-1).astype(bool)
    flat = chains_Uxm.reshape(-1)
    tree_BxC = tree_BxC.at[:, flat].set(tokens_BxUxm.reshape(B, -1))
    valid_BxC = valid_BxC.at[:, flat].set(found_BxUxm.reshape(B, -1))
    return tree_BxC, valid_BxC
