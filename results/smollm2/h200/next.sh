#!/usr/bin/env bash
# What the session-7 H200 run left unmeasured (and the context-draft layouts added since: ctx-M,
# tree-W+ctxM), for the next session lent a GPU. Nothing trains: the benchmarks use the default
# embeddings (greedy-self-L4, the best drafter measured; fourteenth session) and the ablation the
# H200-trained L = 8 export, all committed under pretrained/smollm2-135m-instruct.
# Most important first; each benchmark rewrites its JSON after every cell, so a run stopped by a
# time limit keeps what it measured.
#
#   results/smollm2/h200/next.sh OUT_DIR          # needs artifacts/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   SMOKE=1 results/smollm2/h200/next.sh OUT_DIR  # tiny sizes: a dry run of every step on a CPU
#
# The GPU machine has no grain, TFDS or gguf: carry their wheels and install them with
# `pip install --no-index --no-deps --target /tmp/site`, then PYTHONPATH=/tmp/site (README.md).
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
  CALLS="1,5"
  HF="--no-hf-baselines"
else
  B1="--num-prompts 6 --max-new-tokens 128 --repeats 3"
  B8="--num-prompts 8 --max-new-tokens 128 --repeats 3"
  CALLS="1,5,25,64,128"
  HF="--hf-baselines --hf-temperatures 0,0.8 --hf-repeats 1"
fi

stamp "convert the GGUF, prepare the stdlib corpus"
$PY -c "from infer.default_model import default_model_dir; print(default_model_dir('artifacts/smollm2'))" || exit 1
$PY -c "from pass_jax import stdlib_corpus; stdlib_corpus.prepare('artifacts/tfds')" || exit 1

stamp "the streaming test that failed on the H200 (fixed since, not re-run there)"
$PY -m pytest -q -p no:cacheprovider tests/test_decode.py -k streaming > "$OUTD/pytest-streaming.txt" 2>&1
tail -n 2 "$OUTD/pytest-streaming.txt"

common="--model $M --data stdlib --data-dir artifacts/tfds --top-k 10 --main-lookahead 4 --quiet"
stamp "bench: code, batch 1: the wide trees, auto and the transformers baselines"
$PY -m infer.bench $common --lookahead $LA4 $B1 --prompts code --prompt-tokens 32 \
  --batch-size 1 --temperatures 0,0.8 --methods ar,pass-fused,tree-4x1,tree-8x1,ctx-3,tree-1+ctx3,tree-4+ctx2,tree-8+ctx3,auto \
  $HF --call-tokens $CALLS --out-dir "$OUTD/code" \
  --title "SmolLM2-135M-Instruct on a GPU, code prompts, batch 1, default look-ahead embeddings (L=4)"
stamp "bench: code, batch 8"
$PY -m infer.bench $common --lookahead $LA4 $B8 --prompts code --prompt-tokens 32 \
  --batch-size 8 --temperatures 0,0.8 --methods ar,pass,pass-fused,tree-2x2,tree-8x1,ctx-3,tree-4+ctx2,auto \
  --no-hf-baselines --out-dir "$OUTD/code-batch8" \
  --title "SmolLM2-135M-Instruct on a GPU, code prompts, batch 8, default look-ahead embeddings (L=4)"
stamp "bench: chat, batch 1"
$PY -m infer.bench $common --lookahead $LA4 $B1 --prompts chat \
  --batch-size 1 --temperatures 0,0.8 --methods ar,pass,pass-fused,tree-8x1,ctx-3,tree-4+ctx2 --no-hf-baselines \
  --out-dir "$OUTD/chat" \
  --title "SmolLM2-135M-Instruct on a GPU, chat prompts, batch 1, default look-ahead embeddings (L=4)"
stamp "bench: L ablation (the first L rows of the L=8 export), batch 1, greedy"
$PY -m infer.bench $common --lookahead $LA8 --depths 1,2,3,4,5,6,7 $B1 --prompts code \
  --prompt-tokens 32 --batch-size 1 --temperatures 0 --methods pass,pass-fused --no-hf-baselines \
  --out-dir "$OUTD/ablation" \
  --title "SmolLM2-135M-Instruct on a GPU, code prompts, batch 1, greedy: L ablation from the L=8 export"
stamp "done"
