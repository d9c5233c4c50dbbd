"""Training texts for look-ahead embeddings that match what greedy decoding drafts: the model's
own greedy continuations.

Code texts: for the first N files of the stdlib corpus's train split (sorted by path), up to
WINDOWS windows of 32 prompt tokens (window w starts at token w * STRIDE of the file; each
prompt starts with the tokens the tokenizer adds by default, as the benchmark's do) are continued
greedily by the model for 96 tokens. Chat texts (``--chat C``): C instructions built from
functions of the same files, as the benchmark's chat prompts are (``infer.prompts``), in the
model's chat template, answered greedily for up to 96 tokens (to the end-of-turn token).

Each prompt + continuation is written as one text file into OUT, read back by
``train.lookahead --data files:'OUT/*.txt'`` (which splits them by path into train / held-out;
windows of one source file may land on both sides of that split, which only the training's
held-out estimate sees: the benchmark's prompts come from the corpus's held-out files).

usage: make_texts.py MODEL_DIR OUT N [--windows K] [--stride S] [--chat C]
"""

import argparse
import time
from pathlib import Path

from infer.prompts import make_chat_prompts
from pass_jax import hf
from pass_jax.generation import generate
from pass_jax.stdlib_corpus import split_files, stdlib_dir, stdlib_files

PROMPT, NEW, BATCH = 32, 96, 16


def code_prompts(tok, sources: list[str], windows: int, stride: int) -> list[list[int]]:
    """Up to ``windows`` prompts of PROMPT tokens per source, window w from token w * stride."""
    prefix = tok("")["input_ids"]
    prompts = []
    for source in sources:
        ids = tok(source, add_special_tokens=False)["input_ids"]
        body = PROMPT - len(prefix)
        for w in range(windows):
            window = ids[w * stride : w * stride + body]
            if len(window) == body:
                prompts.append(prefix + window)
    return prompts


def write_texts(cfg, params, tok, prompts, out: Path, name: str, chat: bool) -> int:
    """Greedy continuations of ``prompts`` (in batches of BATCH, shortest prompts first),
    written as ``out/{name}{i:04d}.txt``. Chat texts keep their special tokens and end at the
    end-of-turn token; returns how many of them do not tokenize back to their ids."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    eos = cfg.eos_token_ids if chat else ()
    t0, mismatched = time.perf_counter(), 0
    for start in range(0, len(order), BATCH):
        batch = order[start : start + BATCH]
        rows = [prompts[i] for i in batch]
        result = generate(cfg, params, rows, max_new_tokens=NEW, method="ar", eos_ids=eos)
        for i, prompt, new in zip(batch, rows, result.tokens):
            ids = list(prompt) + [int(t) for t in new]
            text = tok.decode(ids, skip_special_tokens=not chat)
            Path(out, f"{name}{i:04d}.txt").write_text(text)
            mismatched += chat and tok(text, add_special_tokens=False)["input_ids"] != ids
        done = start + len(batch)
        print(f"{name}: {done}/{len(prompts)} texts, {time.perf_counter() - t0:.0f} s", flush=True)
    return mismatched


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("out")
    p.add_argument("n", type=int, help="the first N train-split files")
    p.add_argument("--windows", type=int, default=1, help="code windows per file")
    p.add_argument("--stride", type=int, default=256, help="tokens between windows")
    p.add_argument("--chat", type=int, default=0, help="chat texts to write")
    args = p.parse_args()
    cfg, params = hf.load_hf(args.model_dir, stacked=False)
    tok = hf.load_tokenizer(args.model_dir)
    files = split_files(stdlib_files())["train"][: args.n]
    sources = [(stdlib_dir() / path).read_text(errors="replace") for path in files]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = code_prompts(tok, sources, args.windows, args.stride)
    write_texts(cfg, params, tok, prompts, out, "g", chat=False)
    if args.chat:
        chats, _ = make_chat_prompts(tok, sources, args.chat, seed=0)
        bad = write_texts(cfg, params, tok, chats, out, "c", chat=True)
        print(f"chat: {len(chats)} texts, {bad} do not tokenize back to the same ids")


if __name__ == "__main__":
    main()
