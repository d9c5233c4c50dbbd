#!/usr/bin/env bash
# Context drafts (prompt lookup, alone and under LA_1's draws) against autoregressive decoding,
# PaSS, the 4x1 tree, auto and transformers, on SmolLM2-135M-Instruct with the H200-trained L = 4
# embeddings. Run from the repository root after `make demo`; the development CPU took about
# an hour for the three benchmarks.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/context}
common="$BASE --repeats 2"
$PY -m infer.bench $common --prompts code --num-prompts 4 --prompt-tokens 32 \
  --temperatures 0,0.8 --methods ar,pass,tree-4x1,ctx-3,ctx-6,tree-4+ctx2,tree-8+ctx2,auto \
  --batch-size 1 --hf-temperatures 0 --hf-repeats 1 --out-dir $OUT/code \
  --title "SmolLM2-135M-Instruct, code prompts, batch 1: context drafts, look-ahead embeddings $LA"
$PY -m infer.bench $common --prompts chat --num-prompts 4 \
  --temperatures 0,0.8 --methods ar,pass,tree-4x1,ctx-3,tree-4+ctx2,auto \
  --batch-size 1 --hf-temperatures 0 --hf-repeats 1 --out-dir $OUT/chat \
  --title "SmolLM2-135M-Instruct, chat prompts, batch 1: context drafts, look-ahead embeddings $LA"
$PY -m infer.bench $common --prompts code --num-prompts 8 --prompt-tokens 32 \
  --temperatures 0,0.8 --methods ar,pass,ctx-3,tree-4+ctx2,auto --batch-size 8 --no-hf-baselines \
  --out-dir $OUT/code-batch8 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 8: context drafts, look-ahead embeddings $LA"
