"""auto variants against ar and ctx-3, per prompt, interleaved, each variant with its own
statistics (the cost table is shared: timed once in the process).
python results/smollm2/auto-decay/variants.py REPEATS TEMPERATURE code|chat SEG:DECAY[:TAG],..
TAG old/new needs decay-tried.patch applied ('old' decays every count, 'new' only those a
segment tried); base/hier needs ctx-prior.patch ('hier' judges a context depth by the depth
above it where it has little evidence)."""

import sys

import numpy as np
from common import setup, speedups

import pass_jax.auto as auto
from pass_jax.config import SamplerConfig
from pass_jax.generation import generate

R, T, kind, spec = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
cfg, params, la, prior, prompts = setup(kind, greedy=T == 0)
sampler = SamplerConfig(temperature=T, top_k=10)
variants = [(v.split(":") + [""])[:3] for v in spec.split(",")]
names = ["ar", "ctx-3"] + [f"auto s{s} d{d} {tag}".rstrip() for s, d, tag in variants]
walls = {m: np.zeros((R + 1, len(prompts))) for m in names}
segs, learned = {}, {}
for r in range(R + 1):
    for i, p in enumerate(prompts):
        for m in names:
            if m.startswith("auto"):
                s, d, tag = (m.split() + [""])[1:4]
                auto._LEARNED = learned.setdefault(m, {})  # each variant its own statistics
                if hasattr(auto, "_OLD_DECAY"):  # decay-tried.patch
                    auto._OLD_DECAY = tag == "old"
                if hasattr(auto, "_HIER"):  # ctx-prior.patch
                    auto._HIER = tag == "hier"
                res = auto.generate_auto(
                    cfg, params, [p], max_new_tokens=64, la_LxD=la, sampler=sampler,
                    seed=i + 1000 * r, prior=prior, segment=int(s[1:]), decay=float(d[1:]),
                )  # fmt: skip
                segs[m, i] = "/".join(x.replace("tree-", "t") for x in res.auto.segments)
            else:
                res = generate(
                    cfg, params, [p], max_new_tokens=64, method=m, la_LxD=la,
                    sampler=sampler, seed=i + 1000 * r,
                )  # fmt: skip
            walls[m][r, i] = res.wall_time
med = {m: np.median(w[1:], axis=0) for m, w in walls.items()}
for i in range(len(prompts)):
    cells = "  ".join(f"{m} {med['ar'][i] / med[m][i]:.2f}x" for m in names)
    print(f"\nprompt {i}: {cells}", [segs.get((m, i)) for m in names if m.startswith("auto")])
print("sum: " + speedups(med, names))
