"""One device: generate with mesh=None vs a (1, 1, 1) mesh, same run, medians of 5 after warm-up."""

import statistics
import sys

import jax

from pass_jax import hf, lookahead, sharding
from pass_jax.config import SamplerConfig
from pass_jax.generation import generate

model, la_dir = sys.argv[1], sys.argv[2]
mesh1 = sharding.make_mesh("1,1,1", devices=jax.devices()[:1])
out = {}
for name, mesh in (("no mesh", None), ("1-device mesh", mesh1)):
    cfg, params = hf.load_hf(model, stacked=False, mesh=mesh)
    la = lookahead.load_lookahead(la_dir, cfg, params)
    for method in ("ar", "pass-fused"):
        kw = dict(
            max_new_tokens=32,
            method=method,
            la_LxD=None if method == "ar" else la,
            sampler=SamplerConfig(),
            eos_ids=(),
            mesh=mesh,
        )
        prompts = [[1, 2, 3, 4, 5, 6, 7, 8] * 4]
        generate(cfg, params, prompts, **kw)  # warm-up (compile)
        walls = [generate(cfg, params, prompts, **kw).wall_time for _ in range(5)]
        out[(name, method)] = statistics.median(walls)
        print(
            f"{name:14s} {method:10s} {1e3 * out[(name, method)]:8.1f} ms per 32 tokens "
            f"(runs: {', '.join(f'{1e3 * w:.0f}' for w in walls)})",
            flush=True,
        )
