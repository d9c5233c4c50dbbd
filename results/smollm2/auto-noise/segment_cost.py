"""What running in segments costs `auto` when it runs one layout throughout: fixed `ctx-3`
against `auto` choosing from (ar, ctx-3) with 32-token segments and with one segment, per
code prompt, greedy, batch 1, order rotating, median of 5 repeats after a warm-up.
python results/smollm2/auto-noise/segment_cost.py (from the repository root, after `make demo`)"""

import sys

sys.path.insert(0, "results/smollm2/auto-decay")
import numpy as np
from common import setup

import pass_jax.auto as auto
from pass_jax.config import SamplerConfig
from pass_jax.generation import generate

cfg, params, la, prior, prompts = setup("code", greedy=True)
sampler = SamplerConfig(temperature=0.0, top_k=10)
names = ["ctx-3", "auto s32", "auto s1024"]
walls = {m: np.zeros((6, len(prompts))) for m in names}
for r in range(6):
    for i, p in enumerate(prompts):
        k = (r + i) % 3
        for m in names[k:] + names[:k]:
            if m.startswith("auto"):
                res = auto.generate_auto(
                    cfg,
                    params,
                    [p],
                    max_new_tokens=64,
                    la_LxD=la,
                    sampler=sampler,
                    seed=i,
                    prior=prior,
                    methods=("ar", "ctx-3"),
                    segment=int(m.split()[1][1:]),
                )
                assert set(res.auto.segments) == {"ctx-3"}, res.auto.segments
            else:
                res = generate(
                    cfg,
                    params,
                    [p],
                    max_new_tokens=64,
                    method=m,
                    la_LxD=la,
                    sampler=sampler,
                    seed=i,
                )
            walls[m][r, i] = res.wall_time
med = {m: np.median(w[1:], axis=0).sum() for m, w in walls.items()}
print(
    {m: round(v, 4) for m, v in med.items()},
    {m: round(med["ctx-3"] / v, 4) for m, v in med.items()},
)
