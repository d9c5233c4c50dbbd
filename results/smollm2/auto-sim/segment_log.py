"""What ``auto`` measures per segment on this VM: every (method, seconds, iterations) that
``AcceptanceStats.measure`` receives, over PASSES passes of the benchmark's 6 code prompts at
greedy, batch 1, in one process (the first pass compiles). Prints seconds per iteration per
segment against the layout's timed cost, so the segments' noise and a first run after
compiling show. python results/smollm2/auto-sim/segment_log.py [PASSES] [METHODS]"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "auto-decay"))
from common import setup  # noqa: E402

from pass_jax import auto  # noqa: E402
from pass_jax.config import SamplerConfig  # noqa: E402
from pass_jax.generation import generate  # noqa: E402

log = []
measure = auto.AcceptanceStats.measure


def logged(self, method, seconds, iterations):
    log.append((method, seconds, iterations))
    measure(self, method, seconds, iterations)


auto.AcceptanceStats.measure = logged
cfg, params, la, prior, prompts = setup()
passes = int(sys.argv[1]) if len(sys.argv) > 1 else 4
methods = sys.argv[2].split(",") if len(sys.argv) > 2 else None
timed = None
for r in range(passes):
    line = []
    for i, p in enumerate(prompts):
        start = len(log)
        res = generate(
            cfg, params, [p], max_new_tokens=64, method="auto", la_LxD=la,
            sampler=SamplerConfig(temperature=0.0, top_k=10), seed=i, auto_prior=prior,
            auto_methods=methods,
        )  # fmt: skip
        timed = res.auto.seconds_per_iteration
        for m, s, n in log[start:]:
            line.append(f"{m}:{1e3 * s / n:.1f}/{1e3 * timed[m]:.1f}ms x{n}")
    print(f"\npass {r}: " + "  ".join(line), flush=True)
ratio = {}
for m, s, n in log[len(log) // passes :]:  # after the first pass
    ratio.setdefault(m, []).append(s / n / timed[m])
for m, q in ratio.items():
    q = np.array(q)
    print(
        f"{m}: measured / timed per iteration after pass 0: median {np.median(q):.3f}, "
        f"spread (sd of log) {np.std(np.log(q)):.3f}, range {q.min():.3f}-{q.max():.3f}, n {len(q)}"
    )
