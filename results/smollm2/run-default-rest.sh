#!/usr/bin/env bash
# The README's remaining SmolLM2 tables with the default look-ahead embeddings (fourteenth
# session; before, they were measured with pretrained/smollm2-135m-instruct/L4): the L ablation
# from the first L rows of the default L = 4 set, chat at batch 8, code at batch 8 and T = 0.8.
# Run from the repository root after `make demo`.
set -e
. "$(dirname "$0")/bench_settings.sh"
LA=${1:-pretrained/smollm2-135m-instruct/greedy-self-L4}
OUT=${2:-results/smollm2}
common="--model $M --lookahead $LA --data stdlib --data-dir artifacts/tfds --max-new-tokens 64 --top-k 10 --repeats 2 --main-lookahead 4 --quiet"
$PY -m infer.bench $common --depths 1,2,3 --prompts code --num-prompts 4 --prompt-tokens 32 \
  --temperatures 0,0.8 --methods ar,pass,pass-fused --batch-size 1 --no-hf-baselines \
  --out-dir $OUT/ablation-$(basename $LA) \
  --title "SmolLM2-135M-Instruct, code prompts, batch 1: L ablation (the first L rows of $LA)"
$PY -m infer.bench $common --prompts chat --num-prompts 8 --temperatures 0,0.8 \
  --methods ar,unk,pass,pass-fused --batch-size 8 --hf-temperatures 0 --hf-repeats 1 \
  --out-dir $OUT/chat-batch8-$(basename $LA) \
  --title "SmolLM2-135M-Instruct, chat prompts (held-out stdlib functions), batch 8, look-ahead embeddings $LA"
$PY -m infer.bench $common --prompts code --num-prompts 8 --prompt-tokens 32 --temperatures 0.8 \
  --methods ar,pass,pass-fused,tree-2x2 --batch-size 8 --no-hf-baselines \
  --out-dir $OUT/code-batch8-T0.8-$(basename $LA) \
  --title "SmolLM2-135M-Instruct, code prompts, batch 8, T=0.8, look-ahead embeddings $LA"
