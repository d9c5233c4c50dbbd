"""Per prompt: wall time of ar, ctx-3, ctx-6 and auto (greedy, 64 tokens), interleaved, median
of REPEATS after a warm-up pass, tokens per call, and auto's segments in the last pass.
python results/smollm2/auto-decay/perprompt.py [REPEATS]"""

import sys

import numpy as np
from common import setup, speedups

from pass_jax.config import SamplerConfig
from pass_jax.generation import generate

cfg, params, la, prior, prompts = setup()
R = int(sys.argv[1]) if len(sys.argv) > 1 else 3
methods = ("ar", "ctx-3", "ctx-6", "auto")
walls = {m: np.zeros((R + 1, len(prompts))) for m in methods}
per_call, segs = {}, {}
for r in range(R + 1):
    for i, p in enumerate(prompts):
        for m in methods:
            res = generate(
                cfg, params, [p], max_new_tokens=64, method=m, la_LxD=la,
                sampler=SamplerConfig(temperature=0.0, top_k=10), seed=i,
                auto_prior=prior if m == "auto" else None,
            )  # fmt: skip
            walls[m][r, i] = res.wall_time
            per_call[m, i] = round(len(res.tokens[0]) / res.calls[0], 2)
            if m == "auto":
                segs[i] = "/".join(res.auto.segments)
med = {m: np.median(w[1:], axis=0) for m, w in walls.items()}
for i in range(len(prompts)):
    cells = [
        f"{m} {med[m][i]:.3f}s ({med['ar'][i] / med[m][i]:.2f}x, {per_call[m, i]} t/call)"
        for m in methods
    ]
    print(f"\nprompt {i}: " + "  ".join(cells), segs[i])
print("sum: " + speedups(med, methods))
