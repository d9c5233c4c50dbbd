#!/usr/bin/env bash
# The README's batch-1 tables for the default look-ahead embeddings (thirteenth session:
# pretrained/smollm2-135m-instruct/greedy-self-L4). Run from the repository root after `make demo`.
set -e
. "$(dirname "$0")/bench_settings.sh"
LA=${1:-pretrained/smollm2-135m-instruct/greedy-self-L4}
OUT=${2:-results/smollm2}
common="--model $M --lookahead $LA --data stdlib --data-dir artifacts/tfds --max-new-tokens 64 --temperatures 0,0.8 --top-k 10 --repeats 2 --main-lookahead 4 --quiet"
$PY -m infer.bench $common --prompts code --num-prompts 4 --prompt-tokens 32 \
  --methods ar,unk,pass,pass-fused,tree-2x2 --batch-size 1 --hf-temperatures 0,0.8 --hf-repeats 1 \
  --out-dir $OUT/code-$(basename $LA) \
  --title "SmolLM2-135M-Instruct, code prompts (held-out stdlib files), batch 1, look-ahead embeddings $LA"
$PY -m infer.bench $common --prompts chat --num-prompts 4 \
  --methods ar,pass,pass-fused --batch-size 1 --hf-temperatures 0 --hf-repeats 1 \
  --out-dir $OUT/chat-$(basename $LA) \
  --title "SmolLM2-135M-Instruct, chat prompts (held-out stdlib functions), batch 1, look-ahead embeddings $LA"
$PY -m infer.bench $common --prompts code --num-prompts 8 --prompt-tokens 32 \
  --methods ar,pass,pass-fused --batch-size 8 --temperatures 0 --hf-temperatures 0 --hf-repeats 1 \
  --out-dir $OUT/code-batch8-$(basename $LA) \
  --title "SmolLM2-135M-Instruct, code prompts (held-out stdlib files), batch 8, look-ahead embeddings $LA"
