#!/usr/bin/env bash
# --method auto after its candidates are timed at the cache size they decode with (eleventh
# session), against the fixed methods it chooses between: code prompts at batch 1, greedy and
# T = 0.8, 3 interleaved repeats; then 7 repeats, and batch 8 (README.md). --auto-costs none:
# auto times its candidates in this process (the warm-up), as on a machine without a cost file.
# code-25611d5/ is the first command run at commit 25611d5 (the timing change alone).
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/auto-timing}
$PY -m infer.bench $BASE --repeats 3 --no-hf-baselines --temperatures 0,0.8 --auto-costs none \
  --prompts code --num-prompts 4 --prompt-tokens 32 \
  --methods ar,ctx-3,tree-4+ctx2,auto --batch-size 1 --out-dir $OUT/code \
  --title "SmolLM2-135M-Instruct, code prompts, batch 1: auto (timed at its cache size) and the fixed methods, look-ahead embeddings $LA"
# the same at batch 1 with 7 repeats (ar, ctx-3 and auto only), then batch 8 with 3
$PY -m infer.bench $BASE --repeats 7 --no-hf-baselines --temperatures 0,0.8 --auto-costs none \
  --prompts code --num-prompts 4 --prompt-tokens 32 \
  --methods ar,ctx-3,auto --batch-size 1 --out-dir $OUT/code-repeats7 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 1: auto and the fixed methods, 7 repeats, look-ahead embeddings $LA"
$PY -m infer.bench $BASE --repeats 3 --no-hf-baselines --temperatures 0,0.8 --auto-costs none \
  --prompts code --num-prompts 8 --prompt-tokens 32 \
  --methods ar,ctx-3,auto --batch-size 8 --out-dir $OUT/code-batch8 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 8: auto and the fixed methods, look-ahead embeddings $LA"
# chat prompts at batch 1, 3 repeats
$PY -m infer.bench $BASE --repeats 3 --no-hf-baselines --temperatures 0,0.8 --auto-costs none \
  --prompts chat --num-prompts 4 \
  --methods ar,ctx-3,auto --batch-size 1 --out-dir $OUT/chat \
  --title "SmolLM2-135M-Instruct, chat prompts, batch 1: auto and the fixed methods, look-ahead embeddings $LA"
