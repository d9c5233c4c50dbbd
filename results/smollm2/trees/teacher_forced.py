"""Teacher-forced look-ahead agreement on SmolLM2's own greedy continuations.

For every position t of 4 code prompts' 64-token greedy continuations, one forward pass of
[x_0..x_t, LA_1..LA_4] (the committed L = 4 embeddings) gives LA_i's argmax, compared with the
token the model itself generated at t+1+i: P(LA_i right), and P(LA_2 right | LA_1 right), which
is what a chain's depth-2 acceptance is. Run from the repository root after `make demo`:
`.venv/bin/python results/smollm2/trees/teacher_forced.py`.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from transformers import AutoTokenizer

from pass_jax.generation import generate
from pass_jax.hf import load_hf
from pass_jax.lookahead import load_lookahead
from pass_jax.model import embed_tokens, forward

M = "artifacts/smollm2/model"
LA_DIR = "pretrained/smollm2-135m-instruct/L4"
PROMPTS = [
    "import os\nimport sys\n\n\ndef main(argv):\n    ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n",
    '"""Utilities for parsing dates."""\nimport re\n\n_DATE = re.compile(',
    "def fibonacci(n):\n    ",
]


@partial(jax.jit, static_argnums=0)
def la_logits(cfg, params, seq_1xS, t, la_LxD):
    """One pass of [x_0..x_t, LA_1..LA_L] (the sequence's later tokens masked out): the logits
    ``[L + 1, V]`` of x_t (drafting x_{t+1}) and of LA_1..LA_L (drafting x_{t+2}..)."""
    L = la_LxD.shape[0]
    S = seq_1xS.shape[1]
    idx = jnp.arange(S + L)
    toks = jnp.concatenate([seq_1xS, jnp.zeros((1, L), jnp.int32)], axis=1)
    toks = jnp.where(idx[None] <= t, toks, 0)
    x = embed_tokens(cfg, params, toks)
    la_pos = idx - (t + 1)
    is_la = (la_pos >= 0) & (la_pos < L)
    la_x = la_LxD[jnp.clip(la_pos, 0, L - 1)].astype(x.dtype)
    x = jnp.where(is_la[None, :, None], la_x[None], x)
    logits, _ = forward(cfg, params, toks, idx[None], None, None, x)
    return jax.lax.dynamic_slice_in_dim(logits[0], t, L + 1, axis=0)


def main():
    cfg, params = load_hf(M)
    tok = AutoTokenizer.from_pretrained(M)
    la = load_lookahead(LA_DIR, cfg, params)
    L = la.shape[0]
    ok = []
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        res = generate(cfg, params, [ids], max_new_tokens=64, eos_ids=())
        seq = ids + res.tokens[0]
        for t in range(len(ids), len(seq) - L - 1):
            lg = np.asarray(la_logits(cfg, params, jnp.asarray([seq]), t, la))
            arg = lg.argmax(-1)
            assert arg[0] == seq[t + 1], (t, arg[0], seq[t + 1])
            ok.append([arg[i] == seq[t + 1 + i] for i in range(1, L + 1)])
    ok = np.array(ok)
    print("n", len(ok), "P(LA_i ok)", ok.mean(0).round(3))
    print(
        "P(LA2 ok | LA1 ok)",
        ok[ok[:, 0], 1].mean().round(3),
        "P(LA1&LA2)",
        (ok[:, 0] & ok[:, 1]).mean().round(3),
    )


if __name__ == "__main__":
    main()
