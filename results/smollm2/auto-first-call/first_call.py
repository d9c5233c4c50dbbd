"""auto's first call on a new machine: time iteration_costs for every candidate (no cost file)."""

import time

import jax.numpy as jnp

from pass_jax import iteration_cost as ic
from pass_jax.auto import candidates
from pass_jax.hf import load_hf
from pass_jax.lookahead import load_lookahead

cfg, params = load_hf("artifacts/smollm2/model", stacked=False)
la = jnp.asarray(load_lookahead("pretrained/smollm2-135m-instruct/greedy-self-L4", cfg))
methods = candidates(4)
t = time.perf_counter()
costs, src = ic.iteration_costs(cfg, params, la, methods, [list(range(100, 132))], 256)
print(f"{len(methods)} candidates: {time.perf_counter() - t:.1f} s ({src})")
print({m: round(1e3 * s, 1) for m, s in costs.items()})
