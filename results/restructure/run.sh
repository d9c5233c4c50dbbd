#!/usr/bin/env bash
# Before (ee09072) vs after (main): the same benchmark, alternating, on an idle machine.
set -e
M=/work/main/artifacts/smollm2/model
LA=/work/main/pretrained/smollm2-135m-instruct/L4
args="--model $M --lookahead $LA --data stdlib --data-dir /work/main/artifacts/tfds --prompts code
  --num-prompts 4 --prompt-tokens 32 --max-new-tokens 64 --temperatures 0 --methods ar,pass,pass-fused
  --batch-size 1 --repeats 3 --main-lookahead 4 --no-hf-baselines --no-plots --quiet"
for round in 1 2; do
  for tree in before after; do
    dir=/work/wt-$tree; [ $tree = after ] && dir=/work/main
    (cd $dir && /work/main/.venv/bin/python -m infer.bench $args --out-dir /tmp/ba/$tree-$round \
       --title "$tree round $round" > /tmp/ba/$tree-$round.log 2>&1)
    echo "$tree $round done $(date +%T)"
  done
done
