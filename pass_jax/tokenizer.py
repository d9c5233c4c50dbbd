"""Byte-level BPE tokenizer for the embedded default corpus, saved in Hugging Face format.

`train_bpe` trains a byte-level BPE with `tokenizers` (every byte is in the alphabet, so any text
encodes and decodes back exactly; no <unk> is ever produced), wraps it as a
`transformers.PreTrainedTokenizerFast` with <unk>/<s>/</s>/<pad> set, and `save_pretrained`s it, so
`AutoTokenizer.from_pretrained(out_dir)` loads it like any Hub tokenizer. Encoding adds no special
tokens by itself (the data pipeline appends </s> between documents). `special_affixes` tells
which special tokens any Hugging Face tokenizer adds by default (e.g. LLaMA's <s>).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)  # ids 0, 1, 2, 3 in that order
_TOKENIZER_FILE = "tokenizer.json"


def _byte_level_bpe() -> tokenizers.Tokenizer:
    """An untrained byte-level BPE (GPT-2 style pre-tokenization, no added prefix space)."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _wrap(tokenizer: tokenizers.Tokenizer) -> transformers.PreTrainedTokenizerFast:
    """The Hugging Face tokenizer around a trained `tokenizers.Tokenizer`, special tokens set."""
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,  # exact round trip of code (spaces before '.', ',')
    )


def train_bpe(
    texts: Iterable[str], vocab_size: int, out_dir: str | pathlib.Path
) -> transformers.PreTrainedTokenizerFast:
    """Trains (or reuses) a byte-level BPE on `texts` and saves it to `out_dir` in HF format.

    If `out_dir` already holds a tokenizer with exactly `vocab_size` tokens it is loaded and
    returned without reading `texts` (cached); otherwise a new one is trained and overwrites it.
    `vocab_size` counts the 4 special tokens and the 256 byte tokens.
    """
    min_size = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < min_size:
        raise ValueError(
            f"vocab_size={vocab_size} is below the byte-level minimum {min_size} "
            "(256 bytes + 4 special tokens)"
        )
    out_dir = pathlib.Path(out_dir)
    if (out_dir / _TOKENIZER_FILE).exists():
        cached = load_tokenizer(out_dir)
        if len(cached) == vocab_size:
            return cached
    tokenizer = _byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = _wrap(tokenizer)
    wrapped.save_pretrained(str(out_dir))
    return wrapped


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix): the special token ids the tokenizer adds around a text's tokens by
    default, as ``tokenizer(text)`` and transformers' ``generate`` inputs have them.

    LLaMA-family tokenizers give ``([bos], [])``; GPT-2-style ones and `train_bpe`'s give
    ``([], [])``. Found by encoding a probe text with and without special tokens (tokenizers
    add them by a template that does not depend on the text). Raises ValueError if the plain
    tokens are not a contiguous part of the full ones.
    """
    probe = "a"
    plain = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe, add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError(
        f"cannot tell which special tokens the tokenizer adds: {probe!r} encodes "
        f"to {plain} plain and to {full} with special tokens"
    )


def with_special_tokens(tokenizer, ids_list: list[list[int]]) -> list[list[int]]:
    """Each token list inside the tokenizer's default special tokens (see `special_affixes`)."""
    prefix, suffix = special_affixes(tokenizer)
    return [prefix + list(ids) + suffix for ids in ids_list]


def load_tokenizer(path: str | pathlib.Path) -> transformers.PreTrainedTokenizerBase:
    """Loads a Hugging Face tokenizer from a directory (ours or any model's)."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path} holds no Hugging Face tokenizer "
            f"(expected {_TOKENIZER_FILE} / tokenizer_config.json): {err}"
        ) from err
