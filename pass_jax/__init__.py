"""PaSS (parallel speculative sampling with look-ahead embeddings) decoding in JAX/Flax.

Shape letters. An array's name ends in its shape (``x_BxTxD``: batch rows, tokens, d_model), or a
comment gives it (``# [B, T, D]``). Every module uses these letters, each with one meaning:

====  ==========================================================================================
B     batch rows
T     tokens in one forward call (a decode call's layout; a packed training input, X + R)
S     KV-cache slots (``max_len``)
P     padded prompt length (a prompt bucket)
N     new tokens per row (``max_new_tokens``)
E     EOS ids (padded with -1)
V     vocabulary
D     d_model
F     MLP hidden units (``ffn_dim``)
H     query heads
K     key/value heads
G     query heads per key/value head, H // K
A     head dim (``cfg.hd``)
I     layers (``layers_0 .. layers_{I-1}``)
L     look-ahead tokens: rows of the LA embeddings ``la_LxD``; draft depths j = 1..L; the tokens
      LA_1..LA_L of one LA group
W     draft width: ordered draws kept per depth (children per tree node)
J     depth of one call's draft tree (drafts d_1..d_J from q_1..q_J, J <= L)
C     tree nodes of one call: the root y and its drafts (draws from q_j and context drafts)
U     context chains of one call (``context.py``: a chain of drafts copied from the sequence)
O     tokens one call emits at most: J accepted drafts and the correction or bonus token
X     tokens of one training sequence x_0..x_{X-1}
M     insertion groups per training sequence (packed LA training)
R     LA rows of a packed training input, M * L
====  ==========================================================================================

Besides the letters: ``1`` is a kept axis of size 1 (``mass_Bx1``); ``T1`` = T - 1 and ``2R`` =
2 * R; a leading lower-case ``x`` stands for any leading dims (``logits_xV``); other lower-case
letters stand for a function's int argument (``idx_xk``: ``k`` draws; ``vals_xs``: ``support``
entries).
"""
