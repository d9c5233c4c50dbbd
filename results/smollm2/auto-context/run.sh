#!/usr/bin/env bash
# --method auto (candidates timed on one shared state; context drafts among them) against the
# fixed methods it chooses between, in the same run, 3 interleaved repeats: code prompts at
# batch 1 and 8, chat prompts at batch 1. unk and pass: the [UNK] baseline and the paper's
# schedule with the same embeddings.
set -e
. "$(dirname "$0")/../bench_settings.sh"
OUT=${1:-results/smollm2/auto-context}
common="$BASE --repeats 3 --no-hf-baselines --temperatures 0,0.8"
$PY -m infer.bench $common --prompts code --num-prompts 4 --prompt-tokens 32 \
  --methods ar,unk,pass,ctx-3,ctx-6,auto --batch-size 1 --out-dir $OUT/code \
  --title "SmolLM2-135M-Instruct, code prompts, batch 1: auto and the fixed methods, look-ahead embeddings $LA"
$PY -m infer.bench $common --prompts chat --num-prompts 4 \
  --methods ar,pass,ctx-3,auto --batch-size 1 --out-dir $OUT/chat \
  --title "SmolLM2-135M-Instruct, chat prompts, batch 1: auto and the fixed methods, look-ahead embeddings $LA"
$PY -m infer.bench $common --prompts code --num-prompts 8 --prompt-tokens 32 \
  --methods ar,pass,ctx-3,auto --batch-size 8 --out-dir $OUT/code-batch8 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 8: auto and the fixed methods, look-ahead embeddings $LA"
# code, batch 1, T = 0.8 again: autoregressive against auto (which chose it), 7 repeats
$PY -m infer.bench $common --repeats 7 --temperatures 0.8 --prompts code --num-prompts 4 --prompt-tokens 32 \
  --methods ar,auto --batch-size 1 --out-dir $OUT/code-T0.8-repeats7 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 1, T=0.8: auto against autoregressive, 7 repeats, look-ahead embeddings $LA"
# code, batch 8, greedy again: autoregressive against auto (which chose it), 7 repeats
$PY -m infer.bench $common --repeats 7 --temperatures 0 --prompts code --num-prompts 8 --prompt-tokens 32 \
  --methods ar,auto --batch-size 8 --out-dir $OUT/code-batch8-greedy-repeats7 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 8, greedy: auto against autoregressive, 7 repeats, look-ahead embeddings $LA"
# thirteenth session: code, batch 1, with the new default embeddings (greedy-self-L4)
NEW=pretrained/smollm2-135m-instruct/greedy-self-L4
$PY -m infer.bench ${common/$LA/$NEW} --prompts code --num-prompts 4 --prompt-tokens 32 \
  --methods ar,pass,pass-fused,tree-2x2,ctx-3,auto --batch-size 1 --out-dir $OUT/code-greedy-self-L4 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 1: auto and the fixed methods, look-ahead embeddings $NEW"
# fourteenth session: chat at batch 1 and code at batch 8, with the new default embeddings
$PY -m infer.bench ${common/$LA/$NEW} --prompts chat --num-prompts 4 \
  --methods ar,pass,pass-fused,ctx-3,auto --batch-size 1 --out-dir $OUT/chat-greedy-self-L4 \
  --title "SmolLM2-135M-Instruct, chat prompts, batch 1: auto and the fixed methods, look-ahead embeddings $NEW"
$PY -m infer.bench ${common/$LA/$NEW} --prompts code --num-prompts 8 --prompt-tokens 32 \
  --methods ar,pass,ctx-3,auto --batch-size 8 --out-dir $OUT/code-batch8-greedy-self-L4 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 8: auto and the fixed methods, look-ahead embeddings $NEW"
# code, batch 8, greedy again: autoregressive against auto (which chose it), 9 repeats
$PY -m infer.bench ${common/$LA/$NEW} --repeats 9 --temperatures 0 --prompts code --num-prompts 8 --prompt-tokens 32 \
  --methods ar,auto --batch-size 8 --out-dir $OUT/code-batch8-greedy-repeats9-greedy-self-L4 \
  --title "SmolLM2-135M-Instruct, code prompts, batch 8, greedy: auto against autoregressive, 9 repeats, look-ahead embeddings $NEW"
# chat at batch 8 with the new default embeddings
$PY -m infer.bench ${common/$LA/$NEW} --prompts chat --num-prompts 8 \
  --methods ar,pass,ctx-3,auto --batch-size 8 --out-dir $OUT/chat-batch8-greedy-self-L4 \
  --title "SmolLM2-135M-Instruct, chat prompts, batch 8: auto and the fixed methods, look-ahead embeddings $NEW"
