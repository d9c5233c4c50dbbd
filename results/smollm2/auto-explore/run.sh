#!/usr/bin/env bash
# --method auto after session 17's changes (it explores across calls, tree-1+ctx3 is a
# candidate, its programs compile apart from the timed segments) against the context layouts it
# chooses from, code prompts at batch 1, greedy and T = 0.8, 6 prompts, 3 interleaved repeats;
# then code at batch 8 (ar against auto), where exploring must cost little.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/auto-explore}
# the default embeddings (greedy-self-L4) in place of bench_settings.sh's h200-L4
common="${BASE/h200-L4/greedy-self-L4} --repeats 3 --no-hf-baselines --prompts code --prompt-tokens 32"
$PY -m infer.bench $common --num-prompts 6 --batch-size 1 --temperatures 0,0.8 \
  --methods ar,ctx-3,tree-1+ctx3,tree-4+ctx2,auto --out-dir $OUT/code \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1: auto (exploring across calls, tree-1+ctx3 a candidate, compilation apart) against the context layouts"
$PY -m infer.bench $common --num-prompts 8 --batch-size 8 --temperatures 0,0.8 \
  --methods ar,auto --out-dir $OUT/code-batch8 \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 8: auto against autoregressive"
# chat prompts (52-60 tokens: one prompt bucket and one cache size, as for the code prompts)
$PY -m infer.bench ${common/--prompts code --prompt-tokens 32/--prompts chat} --num-prompts 4 \
  --batch-size 1 --temperatures 0,0.8 --methods ar,ctx-3,auto --out-dir $OUT/chat \
  --title "SmolLM2-135M-Instruct on this CPU, chat prompts, batch 1: auto against autoregressive and ctx-3"
