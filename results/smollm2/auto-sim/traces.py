"""Greedy traces for ``simulate.py``: the benchmark's 6 code prompts and 4 chat prompts, each
continued by 64 greedy tokens (autoregressive decoding: every method's greedy output), and for
every point of the generation how many of a 6-token context draft (``pass_jax.context.lookup``,
as ``ctx-6`` drafts; ``ctx-3``'s are its first 3) greedy verification accepts.
Run from the repository root after `make demo`; writes traces.json beside this file."""

import json
import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "auto-decay"))
from common import setup  # noqa: E402

from pass_jax.config import SamplerConfig  # noqa: E402
from pass_jax.context import lookup  # noqa: E402
from pass_jax.generation import generate  # noqa: E402

N, M = 64, 6  # new tokens per prompt (the benchmark's), the longest context draft simulated


def accepted_lengths(seq: list[int], P: int) -> list[int]:
    """For each count of known tokens ``end`` in [P + 1, P + N): how many of the context draft
    after ``seq[:end]`` equal ``seq[end:]`` (greedy verification accepts that prefix)."""
    ends = np.arange(P + 1, P + N)  # the prefill emits the first token
    hist_BxS = jnp.asarray(np.tile(np.asarray(seq, np.int32), (len(ends), 1)))
    key_BxUx3 = jnp.asarray(np.stack([seq[e - 3 : e] for e in ends])[:, None, :], jnp.int32)
    tokens_BxUxm, valid_BxUxm = lookup(
        hist_BxS, jnp.asarray(ends, jnp.int32), key_BxUx3, jnp.ones_like(key_BxUx3, bool), M
    )
    tokens, valid = np.asarray(tokens_BxUxm[:, 0]), np.asarray(valid_BxUxm[:, 0])
    out = []
    for e, t, v in zip(ends, tokens, valid):
        target = seq[e : e + M]
        a = 0
        while a < min(M, len(target)) and v[a] and t[a] == target[a]:
            a += 1
        out.append(a)
    return out


traces = {}
for kind in ("code", "chat"):
    cfg, params, la, prior, prompts = setup(kind)
    traces[kind] = []
    for p in prompts:
        res = generate(
            cfg, params, [p], max_new_tokens=N, method="ar",
            sampler=SamplerConfig(temperature=0.0, top_k=10),
        )  # fmt: skip
        seq = list(p) + res.tokens[0]
        traces[kind].append({"P": len(p), "tokens": seq, "accepted": accepted_lengths(seq, len(p))})
    traces["prior"] = list(map(float, prior))
path = os.path.join(os.path.dirname(__file__), "traces.json")
with open(path, "w") as f:
    json.dump(traces, f)
print("wrote", path)
