"""How much the call costs ``auto`` times vary on this VM, timed the old way and the new, in
one process: TABLES tables of autoregressive decoding, ``ctx-3`` and ``ctx-6`` (SmolLM2, batch
1, the benchmark's cache size), each method timed alone (warm-up and REPEATS runs, one method
after another: ``auto`` before session 21, 3 repeats) against in rounds
(``iteration_cost.time_iterations`` now, 5 rounds), the two ways alternating. Prints the spread
of the ratios ``auto`` compares. python results/smollm2/auto-sim/timing_spread.py [TABLES]"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "auto-decay"))
from common import setup  # noqa: E402

from pass_jax import iteration_cost as ic  # noqa: E402

cfg, params, la, prior, prompts = setup()
tables = int(sys.argv[1]) if len(sys.argv) > 1 else 12
methods, size = ("ar", "ctx-3", "ctx-6"), 256
batch = [prompts[0]]
ratios = {"alone, 3 repeats": [], "rounds, 5": []}
for t in range(tables):
    alone = {}
    for m in methods:
        alone.update(ic.time_iterations(cfg, params, la, {m: size}, batch, 3, desc=m))
    rounds = ic.time_iterations(cfg, params, la, dict.fromkeys(methods, size), batch, 5)
    for name, c in (("alone, 3 repeats", alone), ("rounds, 5", rounds)):
        ratios[name].append((c["ctx-3"] / c["ar"], c["ctx-6"] / c["ctx-3"]))
    print(
        f"\ntable {t}: "
        + "  ".join(f"{k}: {v[-1][0]:.3f} {v[-1][1]:.3f}" for k, v in ratios.items()),
        flush=True,
    )
for name, r in ratios.items():
    r = np.log(np.array(r))
    print(
        f"{name}: ctx-3/ar median {np.exp(np.median(r[:, 0])):.3f} sd(log) {r[:, 0].std():.3f}; "
        f"ctx-6/ctx-3 median {np.exp(np.median(r[:, 1])):.3f} sd(log) {r[:, 1].std():.3f}"
    )
