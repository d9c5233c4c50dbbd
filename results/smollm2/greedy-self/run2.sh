#!/usr/bin/env bash
# The second round (thirteenth session; README.md): more and more varied self-texts (two code
# windows from each of the 700 train-split files, and 300 chat answers), trained with the KL
# loss of configs/smollm2.yaml and with cross-entropy on the texts' own tokens, then every set
# on the same 8 held-out prompts of both kinds, greedy, batch 1 (deterministic at greedy; one
# timed repeat). Run from the repository root after `make demo`.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/greedy-self}
$PY $OUT/make_texts.py $M runs/self-texts-2 700 --windows 2 --stride 512 --chat 300
TRAIN="-m train.lookahead --config configs/smollm2.yaml --model $M -L 4 --save-every 100 --json"
$PY $TRAIN --data "files:runs/self-texts-2/*.txt" --steps 300 --eval-every 100 --out runs/self2-kl-300
$PY $TRAIN --data "files:runs/self-texts-2/*.txt" --steps 300 --eval-every 100 --loss ce --out runs/self2-ce-300
bench() {  # bench LOOKAHEAD PROMPTS
  $PY -m infer.bench --model $M --lookahead $1 --data stdlib --data-dir artifacts/tfds \
    --max-new-tokens 64 --top-k 10 --main-lookahead 4 --quiet --repeats 1 --no-hf-baselines \
    --temperatures 0 --prompts $2 --num-prompts 8 --prompt-tokens 32 \
    --methods ar,pass,pass-fused,tree-2x2 --batch-size 1 --no-plots \
    --out-dir $OUT/bench-$2-$(basename $1) \
    --title "SmolLM2-135M-Instruct, $2 prompts, batch 1, greedy: look-ahead embeddings $1"
}
# code prompts: the first round's folders (bench-h200-L4, bench-greedy-self-L4-300) hold the rest
for la in runs/self2-kl-300 runs/self2-ce-300 pretrained/smollm2-135m-instruct/L4; do bench $la code; done
for la in runs/self2-kl-300 runs/self2-ce-300 pretrained/smollm2-135m-instruct/L4 $LA \
  $OUT/greedy-self-L4-300; do bench $la chat; done
# the best set against the committed default at T = 0.8 (sampled: one run, a rough comparison)
for p in code chat; do for la in runs/self2-kl-300 pretrained/smollm2-135m-instruct/L4; do
  $PY -m infer.bench --model $M --lookahead $la --data stdlib --data-dir artifacts/tfds \
    --max-new-tokens 64 --top-k 10 --main-lookahead 4 --quiet --repeats 1 --no-hf-baselines \
    --temperatures 0.8 --prompts $p --num-prompts 8 --prompt-tokens 32 \
    --methods ar,pass,pass-fused,tree-2x2 --batch-size 1 --no-plots \
    --out-dir $OUT/bench-T0.8-$p-$(basename $la) \
    --title "SmolLM2-135M-Instruct, $p prompts, batch 1, T=0.8: look-ahead embeddings $la"
done; done
