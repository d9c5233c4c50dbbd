# Settings shared by the SmolLM2 benchmark scripts in results/smollm2/*/run*.sh (sourced; run
# them from the repository root after `make demo`). PY=echo prints the commands instead.
PY=${PY:-.venv/bin/python}
M=artifacts/smollm2/model
LA=pretrained/smollm2-135m-instruct/h200-L4
BASE="--model $M --lookahead $LA --data stdlib --data-dir artifacts/tfds --max-new-tokens 64 --top-k 10 --main-lookahead 4 --quiet"
