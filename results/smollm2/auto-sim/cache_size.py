"""What a bigger KV cache costs a call on this VM: fixed ``ctx-3`` and autoregressive decoding
on the benchmark's 6 code prompts (greedy, batch 1, 64 new tokens) with a cache of 128 slots
(what they need) against 256 (what ``auto`` allocates when its candidates include the wider
trees, whose calls need more slots), interleaved, REPEATS passes after a warm-up, and the
median pass of each. python results/smollm2/auto-sim/cache_size.py [REPEATS]"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "auto-decay"))
from common import setup  # noqa: E402

from pass_jax.config import SamplerConfig  # noqa: E402
from pass_jax.generation import generate  # noqa: E402

cfg, params, la, prior, prompts = setup()
repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
variants = [(m, n) for m in ("ar", "ctx-3") for n in (128, 256)]
walls = {v: [] for v in variants}
for r in range(repeats + 1):
    for m, n in variants[r % 4 :] + variants[: r % 4]:  # the order rotates
        wall = 0.0
        for i, p in enumerate(prompts):
            res = generate(
                cfg, params, [p], max_new_tokens=64, method=m, max_len=n,
                sampler=SamplerConfig(temperature=0.0, top_k=10), seed=i,
            )  # fmt: skip
            wall += res.wall_time
        if r:  # the first pass compiles
            walls[m, n].append(wall)
med = {v: float(np.median(w)) for v, w in walls.items()}
for m in ("ar", "ctx-3"):
    pairs = np.array(walls[m, 256]) / np.array(walls[m, 128])
    print(
        f"{m}: 128 slots {med[m, 128]:.3f} s, 256 slots {med[m, 256]:.3f} s "
        f"({med[m, 256] / med[m, 128]:.3f}x); per repeat {np.round(pairs, 3).tolist()}"
    )
