"""The plain autoregressive loop jitted (as ``ar`` runs) against compiled ahead of time (as
``auto`` runs it: ``compile_apart=True``), interleaved in one process, T = 0.8, median of the
repeats after the first. python results/smollm2/auto-decay/aot.py TOKENS BATCH [aot-first]"""

import sys

import numpy as np
from common import setup

from infer.bench import make_prompts
from pass_jax import hf
from pass_jax.config import SamplerConfig
from pass_jax.decode import generate_fixed
from pass_jax.tokenizer import with_special_tokens

cfg, params, _, _, _ = setup()
N, B = int(sys.argv[1]), int(sys.argv[2])
order = (True, False) if len(sys.argv) > 3 else (False, True)
tok = hf.load_tokenizer("artifacts/smollm2/model")
prompts = with_special_tokens(tok, make_prompts(tok, "stdlib", "artifacts/tfds", B, 32, 0)[0])
sampler = SamplerConfig(temperature=0.8, top_k=10)
walls = {False: [], True: []}
for r in range(12):
    for apart in order:
        res = generate_fixed(
            cfg, params, prompts, max_new_tokens=N, method="ar", sampler=sampler, seed=r,
            compile_apart=apart,
        )  # fmt: skip
        if r:
            walls[apart].append(res.wall_time)
for apart, w in walls.items():
    print("ahead of time" if apart else "jitted", f"{np.median(w):.4f} s", np.round(w, 3))
print(f"ratio: {np.median(walls[True]) / np.median(walls[False]):.3f}")
