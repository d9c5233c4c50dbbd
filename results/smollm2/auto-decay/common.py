"""Shared by this folder's scripts (run them from the repository root after `make demo`): the
default model, embeddings and the benchmark's held-out prompts (6 code prompts of 32 tokens, or
4 chat prompts), as ``infer.bench`` builds them."""

import sys

sys.path.insert(0, ".")

from infer.bench import make_prompts  # noqa: E402
from infer.prompts import make_chat_prompts  # noqa: E402
from pass_jax import hf, lookahead  # noqa: E402
from pass_jax.data import text_source  # noqa: E402
from pass_jax.tokenizer import with_special_tokens  # noqa: E402

M, LA = "artifacts/smollm2/model", "pretrained/smollm2-135m-instruct/greedy-self-L4"


def setup(kind: str = "code", greedy: bool = True):
    """(cfg, params, la, prior, prompts)."""
    cfg, params = hf.load_hf(M, stacked=False)
    tok = hf.load_tokenizer(M)
    la = lookahead.load_lookahead(LA, cfg, params)
    prior = lookahead.recorded_acceptance(LA)["greedy" if greedy else "sampled"]
    if kind == "code":
        prompts, _ = make_prompts(tok, "stdlib", "artifacts/tfds", 6, 32, 0)
        prompts = with_special_tokens(tok, prompts)
    else:
        heldout = text_source("stdlib", "heldout", "artifacts/tfds")
        prompts, _ = make_chat_prompts(tok, heldout, 4, 0)
    return cfg, params, la, prior, prompts


def speedups(med: dict, names) -> str:
    """Each name's summed median wall time and its speedup against ``ar``."""
    ar = med["ar"].sum()
    return "  ".join(f"{m} {med[m].sum():.3f}s ({ar / med[m].sum():.3f}x)" for m in names)
