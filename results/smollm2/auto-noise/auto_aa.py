"""An A/A test of `auto` against autoregressive decoding: `ar`, `auto` (with the export's
prior and the cost file, as `infer.bench` runs it) and `ar` again (`ar2`), batch 8, T = 0.8,
64 tokens, the order rotating every repeat, median of 12 repeats after a warm-up.
python results/smollm2/auto-noise/auto_aa.py (from the repository root, after `make demo`)"""

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
variants = ["ar", "auto", "ar2"]
walls = {v: [] for v in variants}
segs = []
for r in range(13):
    k = r % 3
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
print(
    "auto/ar",
    np.median(walls["auto"]) / np.median(walls["ar"]),
    "ar2/ar",
    np.median(walls["ar2"]) / np.median(walls["ar"]),
)
print(segs)
