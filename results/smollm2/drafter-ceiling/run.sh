#!/usr/bin/env bash
# The runs of README.md, from the repository root, after `make demo` and the text generation of
# results/smollm2/greedy-self/run2.sh (runs/self-texts-2). Each prints one JSON line; the lines
# are in results.jsonl, named by their output file here. medusa.py gained its later figures
# (KL, the replays, P(right at t+1 | right at t)) between runs, so the earlier lines lack
# them; every figure a line has reproduced exactly when rerun (the runs are deterministic).
set -eu
PY=.venv/bin/python
S=results/smollm2/drafter-ceiling/medusa.py
mkdir -p runs/ceiling
$PY $S --texts 800 --steps 400 --batch 512 > runs/ceiling/medusa-d0.jsonl
$PY $S --texts 1500 --steps 800 --batch 512 > runs/ceiling/medusa-d0-all.jsonl
$PY $S --texts 1500 --steps 800 --batch 512 --hidden 2304 --save runs/ceiling/medusa-h2304.npz \
  > runs/ceiling/medusa-h2304-r2.jsonl
$PY $S --hidden 2304 --load runs/ceiling/medusa-h2304.npz > runs/ceiling/medusa-h2304-replay.jsonl
$PY $S --texts 1500 --steps 800 --batch 512 --hidden 2304 --features la1 > runs/ceiling/la1-h2304.jsonl
$PY $S --texts 1500 --steps 800 --batch 512 --hidden 2304 --features la1 \
  --save runs/ceiling/la1-h2304.npz > runs/ceiling/la1-h2304-r2.jsonl
