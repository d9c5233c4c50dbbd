"""What a depth-2 draft that sees the depth-1 token would give: context lookup under LA_1's top-k.

A look-ahead token cannot see the drafts before it, so LA_2 guesses the token after next
without knowing the next one (`teacher_forced.py`: P(LA_2 right | LA_1 right) = 0.045). This
script measures, on SmolLM2's own greedy continuations of the benchmark's code prompts, the
tokens per call of draft trees whose depth-1 children are LA_1's top k (as now) and whose
depth-2 child under a candidate c is either LA_2's argmax (the tree `kx1` as implemented) or a
context lookup: the token that followed the latest earlier occurrence of the longest suffix
(up to 3 tokens) ending in c, and deeper the tokens after it (prompt-lookup decoding, Saxena
2023). Greedy decoding is deterministic, so teacher forcing on the greedy text gives exactly
the acceptance a call would see at each position; tokens per call = 1 + accepted depths,
averaged over every position.

At T = 0.8 (top-k 10) the same is done on sampled continuations, with the exact expected
acceptance of deterministic drafts: a draft path d_1, d_2, .. is accepted to depth k with
probability prod_{i <= k} p(d_i | prefix, d_<i) (p warped as in decoding), and depth-1 children
taken as LA_1's top 8 (PaSS draws them from LA_1's distribution instead: an estimate).
Run from the repository root after `make demo`:
`.venv/bin/python results/smollm2/trees/context_lookup.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np
from teacher_forced import LA_DIR, M, la_logits  # this folder (the script's own)

from infer.bench import make_prompts
from pass_jax.cache import init_cache
from pass_jax.config import SamplerConfig
from pass_jax.generation import generate
from pass_jax.hf import load_hf, load_tokenizer
from pass_jax.lookahead import load_lookahead
from pass_jax.model import forward
from pass_jax.sampling import warp_probs

L, K, NEW = 4, 8, 64
cfg, params = load_hf(M)
tok = load_tokenizer(M)
la = load_lookahead(LA_DIR, cfg, params)
prompts, _ = make_prompts(tok, "stdlib", "artifacts/tfds", 8, 32, seed=0)


def lookup(seq, end, n_max=3, length=2):
    """Up to ``length`` tokens of seq[:end] (only what is known) after the latest earlier
    occurrence of its longest suffix (n <= 3 tokens)."""
    known = seq[:end]
    for n in range(min(n_max, end - 1), 0, -1):
        suffix = known[end - n :]
        for j in range(end - 1, n - 1, -1):
            if known[j - n : j] == suffix:
                return known[j : j + length]
    return []


SAMPLER = SamplerConfig(temperature=0.8, top_k=10)


@jax.jit
def prefill_probs(seq_1xS):
    """The sequence's K/V in a fresh cache and the warped target distribution after each of its
    tokens ``[S, V]``."""
    S = seq_1xS.shape[1]
    cache = init_cache(cfg, 1, S + 8)
    logits, cache = forward(cfg, params, seq_1xS, jnp.arange(S)[None], cache)
    return cache, warp_probs(logits[0], SAMPLER)


@jax.jit
def branch_probs(cache, start, rows_RxT):
    """Warped target distributions ``[R, T, V]`` after each token of R draft paths that follow
    the cached sequence's first ``start`` tokens (the cache rows are shared)."""
    R, T = rows_RxT.shape
    tile = lambda x: jnp.broadcast_to(x, (x.shape[0], R) + x.shape[2:])  # [I, 1, ..] -> [I, R, ..]
    cache = cache.replace(k=tile(cache.k), v=tile(cache.v), lengths=jnp.full((R,), start))
    positions = start + jnp.broadcast_to(jnp.arange(T), (R, T))
    logits, _ = forward(cfg, params, rows_RxT, positions, cache)
    return warp_probs(logits.reshape(R * T, -1), SAMPLER).reshape(R, T, -1)


def chain(p_first, p_after, path):
    """Expected accepted drafts of a deterministic draft path: sum_k prod_{i <= k} p(d_i | ..);
    ``p_first`` the distribution before the path, ``p_after[i]`` the one after its i-th token."""
    ok, total = 1.0, 0.0
    for i, d in enumerate(path):
        ok *= float((p_first if i == 0 else p_after[i - 1])[d])
        total += ok
    return total


def table(rows, title):
    print(title)
    print("| draft tree | tokens per call |\n|---|---|")
    for name in rows[0]:
        print(f"| {name} | {np.mean([r[name] for r in rows]):.2f} |")


rows = []  # per position: accepted depths of each layout
for ids in prompts:
    seq = list(ids) + generate(cfg, params, [ids], max_new_tokens=NEW, eos_ids=()).tokens[0]
    for t in range(len(ids), len(seq) - 4):  # y = x_{t+1} fed; drafts for x_{t+2}, x_{t+3}, ..
        lg = np.asarray(la_logits(cfg, params, jnp.asarray([seq]), t, la))
        top_k = set(np.argsort(-lg[1])[:K].tolist())
        d1 = seq[t + 2] in top_k  # the right token is one of LA_1's top k
        la2 = d1 and int(lg[2].argmax()) == seq[t + 3]
        cont = lookup(seq, t + 3)  # continuation after (.., x_{t+1}, c = x_{t+2})
        lk2 = d1 and cont[:1] == seq[t + 3 : t + 4]
        lk3 = lk2 and cont[1:2] == seq[t + 4 : t + 5]
        pl = lookup(seq, t + 2, length=3)  # prompt lookup alone, from y
        pl1 = pl[:1] == seq[t + 2 : t + 3]
        pl2 = pl1 and pl[1:2] == seq[t + 3 : t + 4]
        pl3 = pl2 and pl[2:3] == seq[t + 4 : t + 5]
        rows.append(
            {
                f"tree {K}x1 (LA_2 argmax at depth 2, as now)": 1 + d1 + la2,
                f"tree {K}x2 (LA_2 argmax and a lookup at depth 2)": 1 + d1 + (la2 or lk2),
                f"tree {K}x1x1 (lookup at depths 2 and 3)": 1 + d1 + lk2 + lk3,
                "prompt lookup alone, 3 tokens (no look-ahead)": 1 + pl1 + pl2 + pl3,
            }
        )
table(
    rows, f"greedy: {len(rows)} positions, {len(prompts)} prompts x {NEW} tokens, top-{K} of LA_1"
)

rows = []
for n, ids in enumerate(prompts):
    res = generate(cfg, params, [ids], max_new_tokens=NEW, eos_ids=(), sampler=SAMPLER, seed=n)
    seq = list(ids) + res.tokens[0]
    cache, p_SxV = prefill_probs(jnp.asarray([seq]))
    p_SxV = np.asarray(p_SxV)
    for t in range(len(ids), len(seq) - 4):
        lg = np.asarray(la_logits(cfg, params, jnp.asarray([seq]), t, la))
        top_k = np.argsort(-lg[1])[:K].tolist()
        la2 = int(lg[2].argmax())
        prefix = seq[: t + 2]  # .. y = x_{t+1}; p_SxV[t + 1] is the distribution after it
        pl = lookup(seq, t + 2, length=3)  # prompt lookup alone
        paths = [pl] + [[c] + lookup(prefix + [c], t + 3) for c in top_k]
        rows_RxT = np.zeros((len(paths), 3), np.int32)
        for i, path in enumerate(paths):
            rows_RxT[i, : len(path)] = path
        after = np.asarray(branch_probs(cache, t + 2, jnp.asarray(rows_RxT)))
        p1 = p_SxV[t + 1]
        rows.append(
            {
                f"tree {K}x1 (LA_2 argmax at depth 2, as now)": 1
                + sum(chain(p1, after[1 + k], [c, la2]) for k, c in enumerate(top_k)),
                f"tree {K}x1x1 (lookup at depths 2 and 3)": 1
                + sum(chain(p1, after[1 + k], paths[1 + k]) for k in range(K)),
                "prompt lookup alone, 3 tokens (no look-ahead)": 1 + chain(p1, after[0], pl),
                f"depth 1 only (top {K} of LA_1)": 1 + sum(float(p1[c]) for c in top_k),
            }
        )
table(rows, f"T=0.8, top-k 10: {len(rows)} positions, sampled continuations (seed = prompt index)")
