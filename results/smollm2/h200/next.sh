#!/usr/bin/env bash
# What the H200 runs of sessions 7 and 17 left unmeasured, for the next session lent a GPU.
# Nothing trains: the benchmarks use the default embeddings (greedy-self-L4) and the ablation
# the H200-trained L = 8 export, all committed under pretrained/smollm2-135m-instruct.
# Session 17 measured code at batch 1 (session17/README.md): this starts with `auto` there,
# fixed since (it explores across calls; tree-1+ctx3 is a candidate), against the fastest
# fixed methods. Most important first; each benchmark rewrites its JSON after every cell, so a
# run stopped by a time limit keeps what it measured.
#
# On a cold machine compilation dominates: about 8-10 s per program, and `auto` times (so
# compiles) its 15 candidates once per batch size. Session 17's first cell (9 methods, the
# transformers baselines and auto's timing) took 7 minutes; a warm rerun of 5 methods, 54 s.
#
#   results/smollm2/h200/next.sh OUT_DIR          # needs artifacts/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   STEPS="chat ablation" results/smollm2/h200/next.sh OUT_DIR   # some steps only
#   SMOKE=1 results/smollm2/h200/next.sh OUT_DIR  # tiny sizes: a dry run of every step on a CPU
#
# Steps, in order: code-auto, batch8, chat, ablation. Estimated from session 17's rate on a cold
# machine (not measured): code-auto about 5 minutes and batch8 about 5 (auto times its
# candidates in each; its programs now compile concurrently, which should shorten that), chat
# about 3 (more where code-auto has not run first on the same machine: auto times its
# candidates again), ablation about 2. After the calls that carry the wheels
# and the GGUF, run STEPS="code-auto batch8" under a 560 s limit (what batch8 measured before
# the limit stays in its JSON), then the rest in one more call if device time is left, at
# once: the machine keeps its compile cache only while warm.
#
# The GPU machine has no grain, TFDS or gguf: carry their wheels and install them with
# `pip install --no-index --no-deps --target /tmp/site`, then PYTHONPATH=/tmp/site (README.md).
# The GGUF (98 MB) is over one call's 64 MiB: split it (`split -b 44000000`), carry the wheels
# and the first part in one call (moving it to /tmp), the rest in the next, and join them.
set -u
OUTD=${1:?usage: next.sh OUT_DIR}
PY=${PY:-python3}
M=artifacts/smollm2/model
LA4=pretrained/smollm2-135m-instruct/greedy-self-L4
LA8=pretrained/smollm2-135m-instruct/h200-L8
mkdir -p "$OUTD"
stamp() { echo "=== $(date +%T) $*"; }

if [ "${SMOKE:-0}" = 1 ]; then
  B1="--num-prompts 1 --max-new-tokens 8 --repeats 1"
  B8="--num-prompts 2 --max-new-tokens 8 --repeats 1"
  HF="--no-hf-baselines"
else
  B1="--num-prompts 6 --max-new-tokens 128 --repeats 3"
  B8="--num-prompts 8 --max-new-tokens 128 --repeats 3"
  HF="--hf-baselines --hf-temperatures 0 --hf-repeats 1"
fi

STEPS=${STEPS:-code-auto batch8 chat ablation}
for s in $STEPS; do
  case "$s" in code-auto | batch8 | chat | ablation) ;;
  *) echo "next.sh: unknown step '$s' (steps: code-auto batch8 chat ablation)" >&2; exit 2 ;;
  esac
done

stamp "convert the GGUF, prepare the stdlib corpus"
$PY -c "from infer.default_model import default_model_dir; print(default_model_dir('artifacts/smollm2'))" || exit 1
$PY -c "from pass_jax import stdlib_corpus; stdlib_corpus.prepare('artifacts/tfds')" || exit 1

common="--model $M --data stdlib --data-dir artifacts/tfds --top-k 10 --main-lookahead 4 --quiet"
step() {
  case "$1" in
  code-auto)  # code, batch 1: auto against the fastest fixed methods
    $PY -m infer.bench $common --lookahead $LA4 $B1 --prompts code --prompt-tokens 32 \
      --batch-size 1 --temperatures 0,0.8 --methods ar,ctx-3,tree-1+ctx3,tree-4+ctx2,auto \
      --no-hf-baselines --out-dir "$OUTD/code-auto" \
      --title "SmolLM2-135M-Instruct on a GPU, code prompts, batch 1: auto against the fastest fixed methods (L=4)" ;;
  batch8)  # code, batch 8 (auto times its candidates again at this batch size)
    $PY -m infer.bench $common --lookahead $LA4 $B8 --prompts code --prompt-tokens 32 \
      --batch-size 8 --temperatures 0,0.8 --methods ar,pass-fused,tree-8x1,ctx-3,tree-1+ctx3,tree-4+ctx2,auto \
      --no-hf-baselines --out-dir "$OUTD/code-batch8" \
      --title "SmolLM2-135M-Instruct on a GPU, code prompts, batch 8, default look-ahead embeddings (L=4)" ;;
  chat)  # chat, batch 1 (auto reads code-auto's batch-1 costs from the cost file on the same machine)
    $PY -m infer.bench $common --lookahead $LA4 $B1 --prompts chat \
      --batch-size 1 --temperatures 0,0.8 --methods ar,pass-fused,tree-8x1,ctx-3,tree-1+ctx3,tree-4+ctx2,auto \
      $HF --out-dir "$OUTD/chat" \
      --title "SmolLM2-135M-Instruct on a GPU, chat prompts, batch 1, default look-ahead embeddings (L=4)" ;;
  ablation)  # the first L rows of the L=8 export, batch 1, greedy
    $PY -m infer.bench $common --lookahead $LA8 --depths 1,2,3,4,5,6,7 $B1 --prompts code \
      --prompt-tokens 32 --batch-size 1 --temperatures 0 --methods pass,pass-fused --no-hf-baselines \
      --out-dir "$OUTD/ablation" \
      --title "SmolLM2-135M-Instruct on a GPU, code prompts, batch 1, greedy: L ablation from the L=8 export" ;;
  esac
}
for s in $STEPS; do
  stamp "bench: $s"
  step "$s"
done
stamp "done"
