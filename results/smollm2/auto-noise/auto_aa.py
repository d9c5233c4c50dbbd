"""`auto` against autoregressive decoding at batch 8, T = 0.8, 64 tokens, `auto` with the
export's prior and the cost file, as `infer.bench` runs it; median of the repeats after a
warm-up.
- `python results/smollm2/auto-noise/auto_aa.py` (`auto_aa.txt`): an A/A test, `ar`, `auto`
  and `ar` again (`ar2`), the order rotating every repeat, 12 repeats.
- `... auto_aa.py alternating` (`auto_ab_alternating.txt`): the benchmark's order, `ar` and
  `auto` alternating every repeat, 15 repeats.
Run from the repository root after `make demo`."""

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

alternating = sys.argv[1:] == ["alternating"]
cfg, params, la, _, _ = setup()
prior = lookahead.recorded_acceptance("pretrained/smollm2-135m-instruct/greedy-self-L4")["sampled"]
N, B = 64, 8
tok = hf.load_tokenizer("artifacts/smollm2/model")
prompts = with_special_tokens(tok, make_prompts(tok, "stdlib", "artifacts/tfds", B, 32, 0)[0])
sampler = SamplerConfig(temperature=0.8, top_k=10)
variants = ["ar", "auto"] if alternating else ["ar", "auto", "ar2"]
walls = {v: [] for v in variants}
segs = []
for r in range(16 if alternating else 13):
    k = r % len(variants)
    for v in variants[k:] + variants[:k]:
        res = generate(
            cfg,
            params,
            prompts,
            max_new_tokens=N,
            method="auto" if v == "auto" else "ar",
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
ratio = np.median(a) / np.median(b)
if alternating:
    print("auto/ar", ratio, "pairs where auto was slower:", int((a > b).sum()), "of", len(a))
else:
    print("auto/ar", ratio, "ar2/ar", np.median(walls["ar2"]) / np.median(b))
print(segs)
