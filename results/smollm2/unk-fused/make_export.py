"""The paper's [UNK] baseline as a look-ahead export: L = 4 rows, each the embedding of
SmolLM2's unk token (id 0), so that fused layouts (pass-fused, tree-1) can be benchmarked with
it like a trained export. python results/smollm2/unk-fused/make_export.py OUT_DIR"""

import sys

from pass_jax import hf
from pass_jax.lookahead import init_lookahead, model_fingerprint, save_lookahead

cfg, params = hf.load_hf("artifacts/smollm2/model")
save_lookahead(sys.argv[1], init_lookahead(cfg, params, 4), cfg, model_fingerprint(cfg, params))
