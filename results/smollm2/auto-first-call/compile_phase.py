"""The compile phase of auto's first call alone: compile_all of the 15 candidates' timing programs
with 1 thread or with one per core (fresh process, no persistent cache)."""

import sys
import time

import jax.numpy as jnp

from pass_jax import compiled
from pass_jax import iteration_cost as ic
from pass_jax.auto import candidates
from pass_jax.decode import generate_fixed, run_steps
from pass_jax.hf import load_hf
from pass_jax.lookahead import load_lookahead

cfg, params = load_hf("artifacts/smollm2/model", stacked=False)
la = jnp.asarray(load_lookahead("pretrained/smollm2-135m-instruct/greedy-self-L4", cfg))
start = generate_fixed(
    cfg,
    params,
    [list(range(100, 132))],
    max_new_tokens=8,
    eos_ids=(),
    method="ar",
    max_len=256,
    return_state=True,
)[1]
jobs = []
for m in candidates(4):
    spec, l, live = ic._timing_args(cfg, m, la, start, ic.STEPS)
    jobs.append((run_steps, (spec,), {"n": ic.STEPS}, (params, l, live)))
threads = int(sys.argv[1])
t = time.perf_counter()
compiled.compile_all(jobs, threads)
print(
    f"threads={threads}: {time.perf_counter() - t:.1f} s for {len(jobs)} programs"
    " (lowering included)"
)
