#!/usr/bin/env bash
# Tokens per call of the fused layouts with the [UNK] embeddings against the trained default
# (greedy-self-L4), like for like (the later --lookahead overrides BASE's): the same methods
# and prompts, code and chat, batch 1, greedy and T = 0.8. One repeat: tokens per call and acceptance do not depend on timing.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/unk-fused}
$PY results/smollm2/unk-fused/make_export.py artifacts/smollm2/unk-L4
for P in code chat; do
  for LA in artifacts/smollm2/unk-L4 pretrained/smollm2-135m-instruct/greedy-self-L4; do
    NAME=$(basename $LA)
    $PY -m infer.bench ${BASE/h200-L4/greedy-self-L4} \
      --lookahead $LA --repeats 1 --no-hf-baselines --batch-size 1 \
      --methods ar,unk,pass,pass-fused,tree-1 --prompts $P --prompt-tokens 32 --num-prompts 6 \
      --temperatures 0,0.8 --out-dir $OUT/$P-$NAME \
      --title "SmolLM2-135M-Instruct on this CPU, $P prompts, batch 1: look-ahead export $NAME"
  done
done
