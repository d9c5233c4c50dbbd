#!/usr/bin/env bash
# The H200 run of the embedded default (SmolLM2-135M-Instruct): convert the GGUF, train look-ahead
# embeddings on the GPU (L = 4, and L = 8 for the L ablation, side by side), then benchmark,
# most important cells first (each bench rewrites its JSON after every cell, so a run stopped by a
# time limit keeps what it measured).
#
#   results/smollm2/h200/run.sh OUT_DIR          # needs artifacts/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   SMOKE=1 results/smollm2/h200/run.sh OUT_DIR  # tiny sizes: a dry run of every step on a CPU
set -u
OUTD=${1:?usage: run.sh OUT_DIR}
PY=${PY:-python3}
M=artifacts/smollm2/model
mkdir -p "$OUTD"
stamp() { echo "=== $(date +%T) $*"; }

if [ "${SMOKE:-0}" = 1 ]; then
  TRAIN="--steps 2 --batch-size 2 --seq-len 64 --groups 4"
  B1="--num-prompts 1 --max-new-tokens 8 --repeats 1"
  B8="--num-prompts 2 --max-new-tokens 8 --repeats 1"
  CALLS="1,5"
else
  TRAIN=""
  B1="--num-prompts 6 --max-new-tokens 128 --repeats 3"
  B8="--num-prompts 8 --max-new-tokens 128 --repeats 3"
  CALLS="1,5,25,64,128"
fi

stamp "convert the GGUF"
$PY -c "from infer.default_model import default_model_dir; print(default_model_dir('artifacts/smollm2'))" || exit 1
stamp "prepare the stdlib corpus"
$PY -c "from pass_jax import stdlib_corpus; stdlib_corpus.prepare('artifacts/tfds')" || exit 1

stamp "train L=4 and L=8 side by side"
for L in 4 8; do
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 $PY -m train.lookahead --config configs/smollm2-gpu.yaml \
    --model $M --data stdlib --data-dir artifacts/tfds -L $L --out "$OUTD/L$L" --json $TRAIN \
    > "$OUTD/train-L$L.log" 2>&1 &
done
wait
tail -n 3 "$OUTD"/train-L*.log

common="--model $M --data stdlib --data-dir artifacts/tfds --top-k 10 --main-lookahead 4 --quiet"
stamp "bench: code, batch 1"
$PY -m infer.bench $common --lookahead "$OUTD/L4" $B1 --prompts code --prompt-tokens 32 \
  --batch-size 1 --temperatures 0,0.8 --methods ar,unk,pass,pass-fused,tree-2x2,tree-3x2x1x1,auto \
  --hf-baselines --hf-temperatures 0 --hf-repeats 1 --call-tokens $CALLS --out-dir "$OUTD/code" \
  --title "SmolLM2-135M-Instruct on one H200, code prompts, batch 1, look-ahead embeddings trained on the H200 (L=4)"
stamp "bench: code, batch 8"
$PY -m infer.bench $common --lookahead "$OUTD/L4" $B8 --prompts code --prompt-tokens 32 \
  --batch-size 8 --temperatures 0,0.8 --methods ar,pass,pass-fused,tree-2x2,auto --no-hf-baselines \
  --out-dir "$OUTD/code-batch8" \
  --title "SmolLM2-135M-Instruct on one H200, code prompts, batch 8, look-ahead embeddings trained on the H200 (L=4)"
stamp "bench: chat, batch 1"
$PY -m infer.bench $common --lookahead "$OUTD/L4" $B1 --prompts chat \
  --batch-size 1 --temperatures 0,0.8 --methods ar,pass,pass-fused,tree-2x2 --no-hf-baselines \
  --out-dir "$OUTD/chat" \
  --title "SmolLM2-135M-Instruct on one H200, chat prompts, batch 1, look-ahead embeddings trained on the H200 (L=4)"
stamp "bench: L ablation (the first L rows of the L=8 export), batch 1, greedy"
$PY -m infer.bench $common --lookahead "$OUTD/L8" --depths 2,3,4,5,6,7 $B1 --prompts code \
  --prompt-tokens 32 --batch-size 1 --temperatures 0 --methods pass-fused --no-hf-baselines \
  --out-dir "$OUTD/ablation" \
  --title "SmolLM2-135M-Instruct on one H200, code prompts, batch 1, greedy: L ablation from the L=8 export"
stamp "done"
