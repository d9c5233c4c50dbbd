#!/usr/bin/env bash
# auto against autoregressive decoding with the benchmark's 95% intervals (a paired bootstrap of
# the interleaved repeats): code at batch 8, T = 0.8 (15 repeats), and code at batch 1, greedy,
# against ctx-3 and ctx-6 (9 repeats). Run from the repository root after `make demo`.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/auto-noise}
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 15 --no-hf-baselines --batch-size 8 \
  --methods ar,auto --prompts code --prompt-tokens 32 --num-prompts 8 --temperatures 0.8 \
  --out-dir $OUT/code-batch8-T0.8 \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 8, T=0.8: auto against autoregressive, 15 repeats"
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 9 --no-hf-baselines --batch-size 1 \
  --methods ar,ctx-3,ctx-6,auto --prompts code --prompt-tokens 32 --num-prompts 6 \
  --temperatures 0 --out-dir $OUT/code-greedy \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1, greedy: auto against ar, ctx-3 and ctx-6, 9 repeats"
# After auto's wall time starts at the prefill (as the fixed methods' does) and the empty cache
# became one jitted program: the batch-1 greedy cell again, against ar and ctx-3.
$PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} --repeats 9 --no-hf-baselines --batch-size 1 \
  --methods ar,ctx-3,auto --prompts code --prompt-tokens 32 --num-prompts 6 \
  --temperatures 0 --out-dir $OUT/code-greedy-after \
  --title "SmolLM2-135M-Instruct on this CPU, code prompts, batch 1, greedy: auto (timed from the prefill) against ar and ctx-3, 9 repeats"
