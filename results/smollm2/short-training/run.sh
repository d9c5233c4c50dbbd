#!/usr/bin/env bash
# Short look-ahead trainings (40 steps, as the demo's own) against the untrained start (the mean
# token embedding in every row), on the 8 held-out code prompts, greedy, batch 1 (README.md).
# Run from the repository root after `make demo` (which trains artifacts/smollm2/lookahead/demo-L4:
# 40 steps of configs/smollm2.yaml on the stdlib corpus).
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/short-training}
$PY - <<'PY'
import numpy as np
from pass_jax import hf, lookahead
cfg, params = hf.load_hf("artifacts/smollm2/model")
la = np.asarray(lookahead.init_lookahead(cfg, params, 4, init="mean"), np.float32)
lookahead.save_lookahead("runs/mean-init-L4", la, cfg, lookahead.model_fingerprint(cfg, params))
PY
TRAIN="-m train.lookahead --config configs/smollm2.yaml --model $M -L 4 --steps 40 --eval-every 40 --save-every 40 --json"
$PY $TRAIN --data self --out runs/demo-self-40
$PY $TRAIN --data stdlib --data-dir artifacts/tfds --lr 1e-3 --out runs/demo-stdlib-40-lr1e-3
for la in artifacts/smollm2/lookahead/demo-L4 runs/demo-self-40 runs/mean-init-L4 runs/demo-stdlib-40-lr1e-3; do
  $PY -m infer.bench --model $M --lookahead $la --data stdlib --data-dir artifacts/tfds \
    --max-new-tokens 64 --top-k 10 --quiet --repeats 1 --no-hf-baselines --no-plots \
    --temperatures 0 --prompts code --num-prompts 8 --prompt-tokens 32 --batch-size 1 \
    --methods ar,pass-fused,tree-1 --out-dir $OUT/bench-$(basename $la)
done
