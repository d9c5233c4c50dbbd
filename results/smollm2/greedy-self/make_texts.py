"""Training texts for look-ahead embeddings that match what greedy decoding drafts: the model's
own greedy continuations of code. For the first N files of the stdlib corpus's train split
(sorted by path), the first 32 tokens (with BOS) are continued greedily by SmolLM2 for 96
tokens, and prompt + continuation is written as one text file into OUT (read back by
``train.lookahead --data files:'OUT/*.txt'``, which splits them by path into train / held-out).

usage: make_texts.py MODEL_DIR OUT N
"""

import sys
import time
from pathlib import Path

import numpy as np

from pass_jax import hf
from pass_jax.generation import generate
from pass_jax.stdlib_corpus import split_files, stdlib_dir, stdlib_files

PROMPT, NEW, BATCH = 32, 96, 16


def main(model_dir: str, out: str, n: int) -> None:
    cfg, params = hf.load_hf(model_dir, stacked=False)
    tok = hf.load_tokenizer(model_dir)
    files = split_files(stdlib_files())["train"][:n]
    prompts = []
    for path in files:
        ids = tok((stdlib_dir() / path).read_text(errors="replace"))["input_ids"]
        if len(ids) >= PROMPT:
            prompts.append(ids[:PROMPT])
    Path(out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for start in range(0, len(prompts), BATCH):
        rows = prompts[start : start + BATCH]
        result = generate(cfg, params, rows, max_new_tokens=NEW, method="ar", eos_ids=())
        for i, (p, new) in enumerate(zip(rows, np.asarray(result.tokens))):
            text = tok.decode(list(p) + [int(t) for t in new], skip_special_tokens=True)
            Path(out, f"g{start + i:04d}.txt").write_text(text)
        print(
            f"{start + len(rows)}/{len(prompts)} texts, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
