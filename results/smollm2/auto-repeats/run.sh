#!/usr/bin/env bash
# --method auto against autoregressive decoding with 9 interleaved repeats (the 3-repeat runs of
# auto-explore/ move by as much as the gap they measure): code prompts at batch 1, T = 0.8, where
# auto explores; then chat prompts at batch 1, both temperatures.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/auto-repeats}
common="${BASE/h200-L4/greedy-self-L4} --repeats 9 --no-hf-baselines --batch-size 1 --methods ar,auto"
$PY -m infer.bench $common --prompts code --prompt-tokens 32 --num-prompts 6 --temperatures 0.8 \
  --out-dir $OUT/code-T0.8 \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1, T=0.8: auto against autoregressive, 9 repeats"
$PY -m infer.bench $common --prompts chat --num-prompts 4 --temperatures 0,0.8 \
  --out-dir $OUT/chat \
  --title "SmolLM2-135M-Instruct on this CPU, chat prompts, batch 1: auto against autoregressive, 9 repeats"
# After the change that compiles auto's candidates concurrently and shares its acceptance
# statistics across cache sizes: code at batch 1 against ar and ctx-3, with no cost file (auto
# times its candidates in the warm-up, as on a new machine), 5 repeats.
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 5 --no-hf-baselines --batch-size 1 \
  --methods ar,ctx-3,auto --auto-costs none --prompts code --prompt-tokens 32 --num-prompts 6 \
  --temperatures 0,0.8 --out-dir $OUT/code-new-timing \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1: auto (timed afresh, candidates compiled concurrently) against ar and ctx-3, 5 repeats"
