#!/usr/bin/env bash
# auto after session 21's changes: code at batch 1, greedy, against ar, ctx-3 and ctx-6
# (9 repeats); code at batch 8, T = 0.8, against ar (15 repeats); code at T = 0.8 and chat at
# batch 1 against ar (9 repeats); the greedy cell again. Run from the repository root after
# `make demo`; the simulation and timing scripts run apart (README). The folders directly
# under auto-sim/ are the first two cells with the cost fixes alone (costs timed in rounds,
# judged at the machine's pace, first runs not measured), from a run of this script before
# its later cells were added; `run.sh results/smollm2/auto-sim/after-cache` made
# after-cache/, with the cache that grows on demand too.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/auto-sim}
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 9 --no-hf-baselines --batch-size 1 \
  --methods ar,ctx-3,ctx-6,auto --prompts code --prompt-tokens 32 --num-prompts 6 \
  --temperatures 0 --out-dir $OUT/code-greedy \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1, greedy: auto (session 21) against ar, ctx-3 and ctx-6, 9 repeats"
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 15 --no-hf-baselines --batch-size 8 \
  --methods ar,auto --prompts code --prompt-tokens 32 --num-prompts 8 --temperatures 0.8 \
  --out-dir $OUT/code-batch8-T0.8 \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 8, T=0.8: auto (session 21) against autoregressive, 15 repeats"
# The cells where auto runs autoregressive decoding at batch 1: code at T = 0.8 (its segments,
# when a call explores, now run with the cache autoregressive decoding needs) and chat (whose
# 64-token prompt bucket needs 256 slots either way).
common="${BASE/h200-L4/greedy-self-L4} --repeats 9 --no-hf-baselines --batch-size 1 --methods ar,auto"
$PY -m infer.bench $common --prompts code --prompt-tokens 32 --num-prompts 6 --temperatures 0.8 \
  --out-dir $OUT/code-T0.8 \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1, T=0.8: auto (session 21) against autoregressive, 9 repeats"
$PY -m infer.bench $common --prompts chat --num-prompts 4 --temperatures 0,0.8 \
  --out-dir $OUT/chat \
  --title "SmolLM2-135M-Instruct on this CPU, chat prompts, batch 1: auto (session 21) against autoregressive, 9 repeats"
# The greedy cell again, a second sample (one run per cell moved by 3-6% in earlier sessions).
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 9 --no-hf-baselines --batch-size 1 \
  --methods ar,ctx-3,ctx-6,auto --prompts code --prompt-tokens 32 --num-prompts 6 \
  --temperatures 0 --out-dir $OUT/code-greedy-2 \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1, greedy: auto (session 21, a second run) against ar, ctx-3 and ctx-6, 9 repeats"
