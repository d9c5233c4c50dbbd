#!/usr/bin/env bash
# LA_1 trained alone (L = 1) against the first row of the default L = 4 set, on the 8 held-out
# code prompts, batch 1 (README.md). Run from the repository root after `make demo`; the second
# round's texts (runs/self-texts-2, ../greedy-self/run2.sh) must exist.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/la1}
DEF=pretrained/smollm2-135m-instruct/greedy-self-L4
$PY -m train.lookahead --config configs/smollm2.yaml --model $M -L 1 \
  --data "files:runs/self-texts-2/*.txt" --steps 300 --eval-every 100 --save-every 100 --json \
  --out runs/self2-kl-L1-300
bench() {  # bench LOOKAHEAD TEMPERATURES NAME [more infer.bench flags]
  la=$1 t=$2 name=$3; shift 3
  $PY -m infer.bench --model $M --lookahead $la --data stdlib --data-dir artifacts/tfds \
    --max-new-tokens 64 --top-k 10 --quiet --repeats 1 --no-hf-baselines --no-plots \
    --temperatures $t --prompts code --num-prompts 8 --prompt-tokens 32 --batch-size 1 \
    --methods ar,pass,pass-fused,tree-4,tree-8 --out-dir $OUT/$name \
    --title "SmolLM2-135M-Instruct, code prompts, batch 1, T=$t: look-ahead embeddings $la" "$@"
}
bench runs/self2-kl-L1-300 0 greedy-L1 --main-lookahead 1
bench $DEF 0 greedy-default-row1 --depths 1 --main-lookahead 1
# context chains under LA_1's top draws (the default set's first row), against ctx-3 alone
bench $DEF 0 ctx-mix-greedy --depths 1 --main-lookahead 1 --methods ar,ctx-3,tree-1+ctx3,tree-2+ctx2,tree-1+ctx2
# the cost of a forward call against its tokens, small calls (no generation: --methods ar only)
$PY -m infer.bench --model $M --data stdlib --data-dir artifacts/tfds --max-new-tokens 64 --quiet \
  --repeats 3 --no-hf-baselines --no-plots --temperatures 0 --prompts code --num-prompts 4 \
  --prompt-tokens 32 --batch-size 1 --methods ar --call-tokens 1,2,3,4,5,10,16,25 \
  --out-dir $OUT/call-tokens --title "SmolLM2-135M-Instruct, batch 1: the cost of a call against its tokens"
# the widest trees against the fused chain (tokens per call; their calls cost 6-24x here)
bench $DEF 0,0.8 wide-trees --main-lookahead 4 --methods ar,pass-fused,tree-8,tree-8x2,tree-6x3x1x1
