#!/usr/bin/env bash
# auto with decay-tried.patch applied (git apply it first; it decays only the acceptance counts
# a segment tries: an experiment of the nineteenth session, not kept): code at batch 1 against
# ar, ctx-3 and ctx-6, the candidates timed afresh in the warm-up (--auto-costs none, as in
# ../auto-repeats/code-new-timing), 5 interleaved repeats.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/auto-decay}
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 5 --no-hf-baselines --batch-size 1 \
  --methods ar,ctx-3,ctx-6,auto --auto-costs none --prompts code --prompt-tokens 32 \
  --num-prompts 6 --temperatures 0,0.8 --out-dir $OUT/code \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1: auto (decaying only what a segment tries) against ar, ctx-3 and ctx-6, 5 repeats"
# The same cell with auto as committed (no patch), against ctx-3 and ctx-6.
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 5 --no-hf-baselines --batch-size 1 \
  --methods ar,ctx-3,ctx-6,auto --auto-costs none --prompts code --prompt-tokens 32 \
  --num-prompts 6 --temperatures 0 --out-dir $OUT/code-committed \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1, greedy: auto as committed against ar, ctx-3 and ctx-6, 5 repeats"
# auto against autoregressive decoding at batch 8, T = 0.8, 9 repeats (the 3-repeat cell of
# ../auto-explore/code-batch8 gave 0.96x, past the goal's 3%).
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 9 --no-hf-baselines --batch-size 8 \
  --methods ar,auto --prompts code --prompt-tokens 32 --num-prompts 8 --temperatures 0.8 \
  --out-dir $OUT/code-batch8-T0.8 \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 8, T=0.8: auto against autoregressive, 9 repeats"
