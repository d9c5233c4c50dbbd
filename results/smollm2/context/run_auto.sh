#!/usr/bin/env bash
# --method auto with context drafts among its candidates (the final auto: a 5% margin over
# autoregressive decoding, measured speeds once a layout ran, statistics carried between
# calls), against autoregressive decoding and ctx-3 in the same run. Run after run.sh.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/context}
common="$BASE --repeats 2 --no-hf-baselines --temperatures 0,0.8 --methods ar,ctx-3,auto"
$PY -m infer.bench $common --prompts code --num-prompts 4 --prompt-tokens 32 \
  --batch-size 1 --out-dir $OUT/auto-code \
  --title "SmolLM2-135M-Instruct, code prompts, batch 1: auto with context drafts, look-ahead embeddings $LA"
$PY -m infer.bench $common --prompts code --num-prompts 8 --prompt-tokens 32 \
  --batch-size 8 --out-dir $OUT/auto-code-batch8 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 8: auto with context drafts, look-ahead embeddings $LA"
