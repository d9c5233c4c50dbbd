#!/usr/bin/env bash
# Two variations of the default set's recipe (pretrained/smollm2-135m-instruct/greedy-self-L4:
# configs/smollm2.yaml, 300 steps on runs/self-texts-2), then every set on the same held-out
# estimate and the same 8 code and 8 chat prompts, greedy, batch 1 (README.md). Run from the
# repository root after `make demo` and ../greedy-self/run2.sh (the texts).
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/longer-training}
DEF=pretrained/smollm2-135m-instruct/greedy-self-L4
TEXTS="files:runs/self-texts-2/*.txt"
TRAIN="-m train.lookahead --config configs/smollm2.yaml --model $M -L 4 --data $TEXTS --json"
# 1. twice the steps and twice the insertion groups per row (4x the targets)
$PY $TRAIN --steps 600 --groups 32 --eval-every 200 --save-every 100 --out runs/self2-kl-g32-600
# 2. the default recipe, training only targets after the model's own greedy choices
$PY $TRAIN --steps 300 --targets greedy --eval-every 100 --save-every 100 --out runs/self2-kl-greedy-300
# the held-out estimate on the model's own greedy continuations, every set on the same rows
$PY $OUT/estimate.py mean $DEF runs/self2-kl-g32-600 runs/self2-kl-greedy-300 -- --model $M -L 4 \
  --data "$TEXTS" --config configs/smollm2.yaml --eval-new-tokens 64 --temperature 0 \
  --eval-batches 8 --eval-groups 48 > $OUT/estimate.jsonl
for la in runs/self2-kl-g32-600 runs/self2-kl-greedy-300; do for p in code chat; do
  $PY -m infer.bench --model $M --lookahead $la --data stdlib --data-dir artifacts/tfds \
    --max-new-tokens 64 --top-k 10 --main-lookahead 4 --quiet --repeats 1 --no-hf-baselines \
    --temperatures 0 --prompts $p --num-prompts 8 --prompt-tokens 32 \
    --methods ar,pass,pass-fused,tree-2x2 --batch-size 1 --no-plots \
    --out-dir $OUT/bench-$p-$(basename $la) \
    --title "SmolLM2-135M-Instruct, $p prompts, batch 1, greedy: look-ahead embeddings $la"
done; done
