"""Context drafts: the lookup against a plain-Python reference, and keys that run into a
tree's drafts."""

import jax.numpy as jnp
import numpy as np

from pass_jax.context import context_drafts, lookup
from pass_jax.layout import make_schedule


def _reference(seq: list[int], key: list[int | None], m: int) -> list[int]:
    """Tokens after the latest earlier occurrence (continuation inside ``seq``) of the longest
    suffix of ``key`` (None: no token there) that occurs: the definition, written plainly."""
    for n in range(3, 0, -1):
        suffix = key[3 - n :]
        if None in suffix:
            continue
        for s in range(len(seq) - 2, n - 2, -1):  # the match ends at s; seq[s + 1] is known
            if seq[s - n + 1 : s + 1] == suffix:
                return seq[s + 1 : s + 1 + m]
    return []


def test_lookup_matches_the_reference():
    rng = np.random.default_rng(0)
    B, S, U, m = 6, 40, 5, 3
    hist = rng.integers(0, 4, (B, S))  # a small vocabulary: every suffix length occurs
    end = rng.integers(1, S, B)
    key = rng.integers(0, 5, (B, U, 3))  # 4 never occurs in hist
    valid = rng.random((B, U, 3)) > 0.2
    tokens, found = map(
        np.asarray, lookup(jnp.asarray(hist), jnp.asarray(end), jnp.asarray(key), valid, m)
    )
    hits = 0
    for b in range(B):
        for u in range(U):
            k = [int(t) if v else None for t, v in zip(key[b, u], valid[b, u])]
            want = _reference(hist[b, : end[b]].tolist(), k, m)
            got = tokens[b, u][found[b, u]].tolist()
            assert got == want, (b, u, k)
            assert found[b, u].tolist() == [i < len(want) for i in range(m)]
            hits += len(want) > 0
    assert 0 < hits < B * U  # both outcomes were seen


def test_context_drafts_key_on_the_path_to_their_anchor():
    """tree-2+ctx1: the chain under the root keys on (.., y); the chain under draw d keys on
    (token before y, y, d): sequence 5 6 7 8 6 7 9 with y = 9, draws 8 and 6."""
    lay = make_schedule("tree-2+ctx1", 1).step[0]
    hist = jnp.asarray([[5, 6, 7, 8, 6, 7, 9, 0, 0, 0]])
    tree = jnp.zeros((1, lay.num_tree), jnp.int32).at[:, :3].set(jnp.asarray([[9, 8, 6]]))
    out, valid = context_drafts(lay, hist, jnp.asarray([7]), tree)
    # root: 9 never occurred before -> no draft; under 8: (7, 9, 8) -> no 3/2-gram, "8" was
    # followed by 6; under 6: "6" last followed by 7 (position 4 -> 5)
    assert np.asarray(valid)[0, 3:6].tolist() == [False, True, True]
    assert np.asarray(out)[0, 4:6].tolist() == [6, 7]
