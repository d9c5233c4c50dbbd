#!/usr/bin/env bash
# Draft trees from the look-ahead distributions with context chains hung under every node: tokens
# per call at greedy (README.md; the same trees without them, and context drafts alone, are in
# ../la1/wide-trees and ../la1/ctx-mix-greedy). The default set, the 8 held-out code prompts,
# batch 1. Run from the repository root after `make demo`.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/trees-ctx}
DEF=pretrained/smollm2-135m-instruct/greedy-self-L4
$PY -m infer.bench --model $M --lookahead $DEF --data stdlib --data-dir artifacts/tfds \
  --max-new-tokens 64 --top-k 10 --main-lookahead 4 --quiet --repeats 1 --no-hf-baselines \
  --no-plots --temperatures 0 --prompts code --num-prompts 8 --prompt-tokens 32 --batch-size 1 \
  --methods ar,tree-8+ctx3,tree-4x2+ctx2,tree-6x3x1x1+ctx3 \
  --out-dir $OUT --title "SmolLM2-135M-Instruct, code prompts, batch 1: LA trees with context chains ($DEF)"
