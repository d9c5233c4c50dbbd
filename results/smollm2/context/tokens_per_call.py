"""Tokens per call of larger context-draft layouts on the benchmark's code prompts (greedy).

Greedy decoding is deterministic, so tokens per call need no timing: this runs each layout once
over the same prompts as ``run.sh``'s code benchmark (4 held-out stdlib files, their first 32
tokens after BOS, 64 new tokens, H200-trained L = 4 embeddings) and checks that the output is
autoregressive decoding's. Run from the repository root after ``make demo``:
``.venv/bin/python results/smollm2/context/tokens_per_call.py``.
"""

from infer.bench import make_prompts
from pass_jax.generation import generate
from pass_jax.hf import load_hf, load_tokenizer
from pass_jax.layout import make_schedule
from pass_jax.lookahead import load_lookahead
from pass_jax.tokenizer import with_special_tokens

M, LA = "artifacts/smollm2/model", "pretrained/smollm2-135m-instruct/h200-L4"
METHODS = (
    "ctx-3",
    "ctx-6",
    "ctx-10",
    "tree-4+ctx2",
    "tree-8+ctx2",
    "tree-8+ctx3",
    "tree-8+ctx5",
    "tree-16+ctx3",
    "tree-4x1+ctx3",
)
cfg, params = load_hf(M, stacked=False)
tok = load_tokenizer(M)
la = load_lookahead(LA, cfg, params)
prompts = with_special_tokens(tok, make_prompts(tok, "stdlib", "artifacts/tfds", 4, 32, seed=0)[0])
ar = [generate(cfg, params, [p], max_new_tokens=64, eos_ids=()).tokens[0] for p in prompts]
print("| layout | tokens in a call | tokens per call (greedy) | acceptance per depth |")
print("|---|---|---|---|")
for m in METHODS:
    tokens = calls = verify_calls = 0
    accepted = 0.0
    for p, want in zip(prompts, ar):
        res = generate(cfg, params, [p], max_new_tokens=64, method=m, la_LxD=la, eos_ids=())
        assert res.tokens[0] == want, m  # lossless
        tokens, calls = tokens + len(res.tokens[0]), calls + res.calls[0]
        verify_calls += res.verify_calls[0]
        accepted = accepted + res.accepted.sum(0)
    per_depth = ", ".join(f"{x:.2f}" for x in accepted / verify_calls)
    T = make_schedule(m, la.shape[0]).step[0].T
    print(f"| {m} | {T} | {tokens / calls:.2f} | {per_depth} |", flush=True)
