#!/usr/bin/env bash
# The runs of README.md, from the repository root, after `make demo` and the text generation of
# results/smollm2/greedy-self/run2.sh (runs/self-texts-2). One JSON line each (README.md has
# them). The first two ran before medusa.py reported the KL and the fused L = 1 replay, and the
# LA_1 + MLP head run before it reported the replay; the rest of each line is unchanged.
set -eu
PY=.venv/bin/python
S=results/smollm2/drafter-ceiling/medusa.py
mkdir -p runs/ceiling
$PY $S --texts 800 --steps 400 --batch 512 > runs/ceiling/medusa-d0.jsonl
$PY $S --texts 1500 --steps 800 --batch 512 > runs/ceiling/medusa-d0-all.jsonl
$PY $S --texts 1500 --steps 800 --batch 512 --hidden 2304 --save runs/ceiling/medusa-h2304.npz \
  > runs/ceiling/medusa-h2304-r2.jsonl
$PY $S --texts 1500 --steps 800 --batch 512 --hidden 2304 --features la1 > runs/ceiling/la1-h2304.jsonl
