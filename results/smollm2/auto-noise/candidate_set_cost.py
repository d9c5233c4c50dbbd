"""Does the candidate set cost `auto` anything when it runs `ctx-3` throughout? Fixed `ctx-3`
against `auto` choosing from (ar, ctx-3), (ar, ctx-3, tree-8x1) and every default candidate,
each with its own statistics, per code prompt, greedy, batch 1, order rotating, median of 5
repeats after a warm-up.
python results/smollm2/auto-noise/candidate_set_cost.py (from the repository root, after
`make demo`)"""

import sys

sys.path.insert(0, "results/smollm2/auto-decay")
import numpy as np
from common import setup

import pass_jax.auto as auto
from pass_jax.config import SamplerConfig
from pass_jax.generation import generate
from pass_jax.iteration_cost import default_cost_file

cfg, params, la, prior, prompts = setup("code", greedy=True)
sampler = SamplerConfig(temperature=0.0, top_k=10)
sets = {"auto2": ("ar", "ctx-3"), "auto3": ("ar", "ctx-3", "tree-8x1"), "autoall": None}
names = ["ctx-3"] + list(sets)
walls = {m: np.zeros((6, len(prompts))) for m in names}
segs = {m: set() for m in sets}
learned = {}
for r in range(6):
    for i, p in enumerate(prompts):
        k = (r + i) % len(names)
        for m in names[k:] + names[:k]:
            if m in sets:
                auto._LEARNED = learned.setdefault(m, {})
                res = auto.generate_auto(
                    cfg,
                    params,
                    [p],
                    max_new_tokens=64,
                    la_LxD=la,
                    sampler=sampler,
                    seed=i,
                    prior=prior,
                    methods=sets[m],
                    cost_file=default_cost_file(),
                )
                segs[m] |= set(res.auto.segments)
            else:
                res = generate(
                    cfg, params, [p], max_new_tokens=64, method=m, sampler=sampler, seed=i
                )
            walls[m][r, i] = res.wall_time
med = {m: np.median(w[1:], axis=0).sum() for m, w in walls.items()}
print(
    {m: round(v, 4) for m, v in med.items()},
    {m: round(med["ctx-3"] / v, 4) for m, v in med.items()},
    segs,
)
