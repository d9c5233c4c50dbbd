"""`auto` against autoregressive decoding in the benchmark's order: two methods, the order
alternating every repeat (`ar`, `auto`, then `auto`, `ar`), batch 8, T = 0.8, 64 tokens, the
export's prior and the cost file as `infer.bench` uses them, median of 15 repeats after a
warm-up. python results/smollm2/auto-noise/auto_ab_alternating.py (from the repository root,
after `make demo`)"""

import sys

sys.path.insert(0, "results/smollm2/auto-decay")
import numpy as np
from common import setup

from infer.bench import make_prompts
from pass_jax import hf, lookahead
from pass_jax.config import SamplerConfig
from pass_jax.generation import generate
from pass_jax.iteration_cost import default_cost_file
from pass_jax.tokenizer import with_special_tokens

cfg, params, la, _, _ = setup()
prior = lookahead.recorded_acceptance("pretrained/smollm2-135m-instruct/greedy-self-L4")["sampled"]
N, B = 64, 8
tok = hf.load_tokenizer("artifacts/smollm2/model")
prompts = with_special_tokens(tok, make_prompts(tok, "stdlib", "artifacts/tfds", B, 32, 0)[0])
sampler = SamplerConfig(temperature=0.8, top_k=10)
variants = ["ar", "auto"]
walls = {v: [] for v in variants}
segs = []
for r in range(16):
    k = r % 2
    for v in variants[k:] + variants[:k]:
        m = "auto" if v == "auto" else "ar"
        res = generate(
            cfg,
            params,
            prompts,
            max_new_tokens=N,
            method=m,
            la_LxD=la,
            sampler=sampler,
            seed=r,
            auto_prior=prior,
            auto_cost_file=default_cost_file(),
        )
        if v == "auto":
            segs.append(res.auto.segments)
        if r:
            walls[v].append(res.wall_time)
for v, w in walls.items():
    print(v, f"{np.median(w):.4f}", np.round(w, 3))
a, b = np.array(walls["auto"]), np.array(walls["ar"])
print(
    "auto/ar",
    np.median(a) / np.median(b),
    "pairs where auto was slower:",
    int((a > b).sum()),
    "of",
    len(a),
)
print(segs)
