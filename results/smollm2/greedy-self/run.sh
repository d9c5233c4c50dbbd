#!/usr/bin/env bash
# Look-ahead embeddings trained on the model's own greedy continuations of code (twelfth
# session; README.md): the texts, two trainings (100 and 300 steps, from the mean embedding,
# configs/smollm2.yaml otherwise), and the draft quality of each set against the H200-trained
# default on the same 8 held-out code prompts at greedy (tokens per call and acceptance are
# deterministic at greedy; one timed repeat). Run from the repository root after `make demo`.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/greedy-self}
$PY $OUT/make_texts.py $M runs/greedy-self-texts 208
TRAIN="-m train.lookahead --config configs/smollm2.yaml --model $M -L 4 --save-every 100 --json"
$PY $TRAIN --data "files:runs/greedy-self-texts/*.txt" --steps 100 --eval-every 50 --out runs/greedy-self-L4
$PY $TRAIN --data "files:runs/greedy-self-texts/*.txt" --steps 300 --eval-every 100 --out runs/greedy-self-L4-300
for la in $LA runs/greedy-self-L4 runs/greedy-self-L4-300; do
  $PY -m infer.bench --model $M --lookahead $la --data stdlib --data-dir artifacts/tfds \
    --max-new-tokens 64 --top-k 10 --main-lookahead 4 --quiet --repeats 1 --no-hf-baselines \
    --temperatures 0 --prompts code --num-prompts 8 --prompt-tokens 32 \
    --methods ar,pass,pass-fused,tree-2x2 --batch-size 1 --no-plots \
    --out-dir $OUT/bench-$(basename $la) \
    --title "SmolLM2-135M-Instruct, code prompts, batch 1, greedy: look-ahead embeddings $la"
done
# the same prompts at T = 0.8 (sampled: one repeat, so a rough comparison)
for la in $LA runs/greedy-self-L4-300; do
  $PY -m infer.bench --model $M --lookahead $la --data stdlib --data-dir artifacts/tfds \
    --max-new-tokens 64 --top-k 10 --main-lookahead 4 --quiet --repeats 1 --no-hf-baselines \
    --temperatures 0.8 --prompts code --num-prompts 8 --prompt-tokens 32 \
    --methods ar,pass-fused,tree-2x2 --batch-size 1 --no-plots \
    --out-dir $OUT/bench-T0.8-$(basename $la) \
    --title "SmolLM2-135M-Instruct, code prompts, batch 1, T=0.8: look-ahead embeddings $la"
done
