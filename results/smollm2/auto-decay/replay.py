"""Replay auto's choices on the benchmark's 6 code prompts, greedy, in one process: PASSES
passes (default 6); print each call's segments (the layout of each 32-token segment).
python results/smollm2/auto-decay/replay.py [PASSES]"""

import sys

from common import setup

from pass_jax.config import SamplerConfig
from pass_jax.generation import generate

cfg, params, la, prior, prompts = setup()
passes = int(sys.argv[1]) if len(sys.argv) > 1 else 6
for r in range(passes):
    line, wall = [], 0.0
    for i, p in enumerate(prompts):
        res = generate(
            cfg, params, [p], max_new_tokens=64, method="auto", la_LxD=la,
            sampler=SamplerConfig(temperature=0.0, top_k=10), seed=i, auto_prior=prior,
        )  # fmt: skip
        wall += res.wall_time
        line.append("/".join(s.replace("tree-", "t") for s in res.auto.segments))
    print(f"\npass {r}: {wall:.2f} s  ", "  ".join(line), flush=True)
