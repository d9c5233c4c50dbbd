"""An A/A test of the plain autoregressive loop: jitted (`jit`, and again as `jit2`) against
compiled ahead of time (`aot`, as `auto` runs it), batch 8, T = 0.8, 64 tokens, the order
rotating every repeat, median of 12 repeats after a warm-up.
python results/smollm2/auto-noise/aot_aa.py (from the repository root, after `make demo`)"""

import sys

sys.path.insert(0, "results/smollm2/auto-decay")
import numpy as np
from common import setup

from infer.bench import make_prompts
from pass_jax import hf
from pass_jax.config import SamplerConfig
from pass_jax.decode import generate_fixed
from pass_jax.tokenizer import with_special_tokens

cfg, params, _, _, _ = setup()
N, B = 64, 8
tok = hf.load_tokenizer("artifacts/smollm2/model")
prompts = with_special_tokens(tok, make_prompts(tok, "stdlib", "artifacts/tfds", B, 32, 0)[0])
sampler = SamplerConfig(temperature=0.8, top_k=10)
variants = ["jit", "aot", "jit2"]
walls = {v: [] for v in variants}
for r in range(13):
    k = r % 3
    for v in variants[k:] + variants[:k]:
        res = generate_fixed(
            cfg,
            params,
            prompts,
            max_new_tokens=N,
            method="ar",
            sampler=sampler,
            seed=r,
            compile_apart=(v == "aot"),
        )
        if r:
            walls[v].append(res.wall_time)
for v, w in walls.items():
    print(v, f"{np.median(w):.4f}", np.round(w, 3))
print(
    "aot/jit",
    np.median(walls["aot"]) / np.median(walls["jit"]),
    "jit2/jit",
    np.median(walls["jit2"]) / np.median(walls["jit"]),
)
