"""Corpora and input pipelines: TFDS / local files / stdlib / self-generated text -> token batches.

A corpus is named by a spec string (the `--data` flag):
  tfds:NAME[/CONFIG][:SPLIT]  a prepared TFDS dataset (array_record) under `data_dir`
  files:GLOB                  local text or code files (`**` recurses)
  stdlib                      the embedded default: this interpreter's stdlib (`stdlib_corpus`)
  self                        text sampled from the base model (needs a `sample_fn`)

`text_source(spec, split)` gives a random-access `grain.MapDataset` of strings for the logical
split 'train' or 'heldout'; `token_batches` turns it into a checkpointable grain iterator of
fixed-shape int32 batches (shuffle with a seed, shard per JAX process, repeat, tokenize each
document with the tokenizer's default special tokens (e.g. LLaMA's <s> in front) and </s> after
it, pack or crop to `seq_len`, batch).

Held-out split per source:
  stdlib, files:  by a stable hash of the file path (`stdlib_corpus.split_files`);
  tfds:           the dataset's 'validation', 'test' or 'heldout' split if it has one, otherwise
                  the last 5% of the training split (training then reads the first 95%);
  self:           a separate sample from the model.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from grain.experimental import ConcatThenSplitIterDataset, WindowShuffleIterDataset
from tqdm import tqdm

from pass_jax import stdlib_corpus
from pass_jax.tokenizer import special_affixes

SPEC_FORMS = ("tfds:NAME[/CONFIG][:SPLIT]", "files:GLOB", "stdlib", "self")
SPLITS = (stdlib_corpus.TRAIN_SPLIT, stdlib_corpus.HELDOUT_SPLIT)
TFDS_HELDOUT_SPLITS = ("validation", "test", "heldout")
TFDS_HELDOUT_PERCENT = 5
# Tokenization runs ahead of the consumer in a few threads; a small buffer keeps it from
# competing for CPU with the train step on small machines.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)
Batch = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- specs


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A parsed corpus spec. `kind` is 'tfds', 'files', 'stdlib' or 'self'.

    `name` is the TFDS name (with '/CONFIG' if given), `split` the explicit TFDS split or None,
    `pattern` the glob of a 'files' spec.
    """

    kind: str
    name: str | None = None
    split: str | None = None
    pattern: str | None = None


def parse_spec(spec: str) -> DataSpec:
    """Parses a `--data` spec; raises ValueError naming the accepted forms if it is none of them."""
    if spec in ("stdlib", "self"):
        return DataSpec(kind=spec)
    kind, sep, rest = spec.partition(":")
    if sep and rest and kind == "files":
        return DataSpec(kind="files", pattern=rest)
    if sep and rest and kind == "tfds":
        name, _, split = rest.partition(":")  # NAME has no ':'; SPLIT may ('train[:10%]')
        if name and not name.startswith("/"):
            return DataSpec(kind="tfds", name=name, split=split or None)
    raise ValueError(f"unknown data spec {spec!r}; expected one of: {', '.join(SPEC_FORMS)}")


def check_seq_len(seq_len: int, max_position: int) -> None:
    """Raises ValueError unless 1 <= seq_len <= max_position (the model's maximum length)."""
    if seq_len < 1:
        raise ValueError(f"sequence length must be positive, got {seq_len}")
    if seq_len > max_position:
        raise ValueError(
            f"sequence length {seq_len} is larger than the model's maximum "
            f"{max_position} (max_position_embeddings); use a seq_len <= {max_position}"
        )


# ----------------------------------------------------------------------------- text sources


def _as_str(value: Any) -> str:
    """A TFDS text value (bytes from array_record, str from mocks, 0-d arrays) as str."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _nonempty(texts: grain.MapDataset, what: str) -> grain.MapDataset:
    """Returns `texts`, or raises ValueError if it has no documents."""
    if len(texts) == 0:
        raise ValueError(f"empty corpus: {what} has no documents")
    return texts


def _text_field(features: tfds.features.FeaturesDict) -> str:
    """'text' if the dataset has it, else its first top-level Text feature."""
    if "text" in features:
        return "text"
    for name, feature in features.items():
        if isinstance(feature, tfds.features.Text):
            return name
    raise ValueError(f"TFDS dataset has no text feature; its features are {list(features)}")


def _tfds_split(builder: tfds.core.DatasetBuilder, requested: str | None, split: str) -> str:
    """The TFDS split string for logical `split` ('train' / 'heldout'); see the module docstring."""
    train = requested or "train"
    heldout = next(
        (s for s in TFDS_HELDOUT_SPLITS if s in builder.info.splits and s != train), None
    )
    if heldout is not None:
        return train if split == stdlib_corpus.TRAIN_SPLIT else heldout
    if "[" in train:
        raise ValueError(
            f"TFDS split {train!r} is already sliced and the dataset has no "
            f"{'/'.join(TFDS_HELDOUT_SPLITS)} split to hold out; give a plain split"
        )
    cut = 100 - TFDS_HELDOUT_PERCENT
    return f"{train}[:{cut}%]" if split == stdlib_corpus.TRAIN_SPLIT else f"{train}[{cut}%:]"


def _tfds_texts(
    name: str, requested_split: str | None, split: str, data_dir: str | None
) -> grain.MapDataset:
    """Texts of a prepared TFDS dataset (read as an array_record data source, no TensorFlow).

    A name TFDS does not know, or a dataset not prepared as array_record under `data_dir`, is a
    ValueError saying which (with close names, or the command that prepares it).
    """
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        names = sorted(set(tfds.list_builders(with_community_datasets=False)))
        close = difflib.get_close_matches(name.split("/")[0], names, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown TFDS dataset {name!r}{hint}; the names are listed at "
            "https://www.tensorflow.org/datasets/catalog/overview"
        ) from None
    field = _text_field(builder.info.features)
    tfds_split = _tfds_split(builder, requested_split, split)
    try:
        source = builder.as_data_source(split=tfds_split)
    except NotImplementedError:  # TFDS's answer when there is no array_record copy to read
        found = (
            f"prepared as {builder.info.file_format.value}, not array_record"
            if builder.is_prepared()
            else "not prepared"
        )
        raise ValueError(
            f"TFDS dataset {name!r} is {found} in {builder.data_dir_root}; prepare it first "
            f"(downloads it): tfds build {name} --data_dir {builder.data_dir_root} "
            "--file_format array_record"
        ) from None
    texts = grain.MapDataset.source(source).map(lambda example: _as_str(example[field]))
    return _nonempty(texts, f"TFDS {name} split {tfds_split!r}")


def _read_text(path: str) -> str:
    """A local file's text (UTF-8, undecodable bytes replaced)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _file_texts(pattern: str, split: str) -> grain.MapDataset:
    """Texts of the non-empty files matching `pattern` in `split` (by path hash), read lazily."""
    paths = sorted(
        p
        for p in glob.glob(pattern, recursive=True)
        if os.path.isfile(p) and os.path.getsize(p) > 0
    )
    if not paths:
        raise ValueError(f"empty corpus: files:{pattern} matches no non-empty file")
    split_paths = stdlib_corpus.split_files(paths)[split]
    return _nonempty(
        grain.MapDataset.source(split_paths).map(_read_text),
        f"the {split} split of files:{pattern} ({len(paths)} files)",
    )


def _stdlib_texts(split: str, data_dir: str | None) -> grain.MapDataset:
    """Texts of the stdlib corpus, prepared into `data_dir` on first use."""
    corpus = stdlib_corpus.prepare(data_dir or stdlib_corpus.DEFAULT_DATA_DIR)
    texts = grain.MapDataset.source(corpus.as_data_source(split=split))
    return _nonempty(texts.map(lambda example: _as_str(example["text"])), f"stdlib {split}")


def self_generated_texts(
    sample_fn: Callable[[int], list[str]], num_texts: int, batch_size: int = 8
) -> list[str]:
    """`num_texts` texts sampled from the model, `batch_size` per call of `sample_fn(n)`.

    `sample_fn(n)` returns n generated strings (e.g. wrapping `pass_jax.decode.generate` from BOS
    or from prompts of another corpus); empty generations are dropped and resampled.
    """
    texts: list[str] = []
    with tqdm(
        total=num_texts,
        desc="sampling texts from the model",
        unit="text",
        mininterval=1.0,
        dynamic_ncols=True,
    ) as bar:
        for _ in range(10 * math.ceil(num_texts / batch_size)):  # bounded: may emit only EOS
            new = [t for t in sample_fn(min(batch_size, num_texts - len(texts))) if t]
            texts.extend(new)
            bar.update(len(new))
            if len(texts) >= num_texts:
                return texts
    raise ValueError(
        f"empty corpus: the model produced only {len(texts)} non-empty texts "
        f"of the {num_texts} asked for"
    )


def text_source(
    spec: str | DataSpec,
    split: str = "train",
    data_dir: str | None = None,
    *,
    sample_fn: Callable[[int], list[str]] | None = None,
    num_self_texts: int = 256,
) -> grain.MapDataset:
    """A random-access grain MapDataset of the documents (str) of logical `split` of `spec`.

    `split` is 'train' or 'heldout' (see the module docstring for how each source holds out).
    `data_dir` is the TFDS data dir (for 'stdlib' the cache it is prepared into; default
    `artifacts/tfds`). The 'self' corpus needs `sample_fn` (see `self_generated_texts`).
    Raises ValueError for an unknown spec or split, or a corpus with no documents.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if spec.kind == "tfds":
        return _tfds_texts(spec.name, spec.split, split, data_dir)
    if spec.kind == "files":
        return _file_texts(spec.pattern, split)
    if spec.kind == "stdlib":
        return _stdlib_texts(split, data_dir)
    if sample_fn is None:
        raise ValueError("the 'self' corpus samples text from the model: pass sample_fn")
    return grain.MapDataset.source(self_generated_texts(sample_fn, num_self_texts))


# ----------------------------------------------------------------------------- token pipeline


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (no length warnings for long documents)."""
    return tokenizer.encode(text, add_special_tokens=False, verbose=False)


def _document_tokens(
    tokenizer, text: str, affixes: tuple[list[int], list[int]]
) -> dict[str, np.ndarray]:
    """{'tokens': int32 [n]}: prefix + the document's tokens + suffix, then </s> unless the
    suffix already ends with it. `affixes` is (prefix, suffix) of special token ids."""
    prefix, suffix = affixes
    ids = prefix + _encode(tokenizer, text) + suffix
    if ids[-1:] != [tokenizer.eos_token_id]:
        ids.append(tokenizer.eos_token_id)
    return {"tokens": np.asarray(ids, np.int32)}


def _crop(tokens: dict[str, np.ndarray], seq_len: int, pad_id: int) -> Batch:
    """One document cropped / right-padded to `seq_len`, as a single-segment row."""
    tokens_X = tokens["tokens"][:seq_len]
    n = len(tokens_X)
    row_X = np.full(seq_len, pad_id, np.int32)
    row_X[:n] = tokens_X
    segment_ids_X = (np.arange(seq_len) < n).astype(np.int32)
    return {
        "tokens": row_X,
        "segment_ids": segment_ids_X,
        "positions": np.arange(seq_len, dtype=np.int32) * segment_ids_X,
    }


def _packed_row(row: Batch, pad_id: int) -> Batch:
    """Grain's packing outputs under the pipeline's keys, padding (only at the very end of a
    finite pass) set to `pad_id`."""
    segment_ids_X = row["tokens_segment_ids"]
    return {
        "tokens": np.where(segment_ids_X > 0, row["tokens"], pad_id).astype(np.int32),
        "segment_ids": segment_ids_X,
        "positions": row["tokens_positions"],
    }


def _with_mask(batch: Batch) -> Batch:
    """Adds mask_BxX (True on real tokens, False on padding)."""
    return {**batch, "mask": batch["segment_ids"] > 0}


def token_batches(
    source: Sequence[str] | grain.MapDataset,
    tokenizer,
    seq_len: int,
    batch_size: int,
    seed: int,
    *,
    shuffle: bool = True,
    repeat: bool = True,
    pack: bool = True,
    shuffle_window: int = 256,
    shard_index: int | None = None,
    shard_count: int | None = None,
    add_special_tokens: bool = True,
) -> grain.DatasetIterator:
    """A checkpointable iterator of fixed-shape token batches from the documents in `source`.

    Each batch is a dict of [batch_size, seq_len] arrays:
      tokens       int32  token ids (padding: the tokenizer's pad id, else 0)
      segment_ids  int32  1, 2, .. numbering the documents in a row; 0 on padding
      positions    int32  position within the row's document (restarts at each segment)
      mask         bool   segment_ids > 0
    Each document gets the special tokens the tokenizer adds by default, as `tokenizer(text)`
    does (`pass_jax.tokenizer.special_affixes`: e.g. <s> in front for LLaMA-family tokenizers,
    nothing for GPT-2-style ones; none with `add_special_tokens=False`), and is followed by
    </s>. With `pack`, documents are concatenated and split into rows of `seq_len` (long documents
    continue on the next row; padding only in the last row of a finite pass), and rows are
    shuffled within a window of `shuffle_window` rows so a batch mixes documents; without it,
    each row is one document cropped or padded to `seq_len`.
    Documents are shuffled with `seed` (reshuffled every epoch when `repeat`), then sharded
    across JAX processes (`shard_index` / `shard_count`, default this process of all). The last
    partial batch is dropped. The iterator's state: `iterator_state` / `restore_iterator`.
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    docs = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
    if shuffle:
        docs = docs.shuffle(seed=seed)
    docs = docs[shard_index::shard_count]
    if len(docs) == 0:
        raise ValueError(
            f"shard {shard_index} of {shard_count} has no documents (the corpus has {len(source)})"
        )
    if repeat:
        docs = docs.repeat()
    affixes = special_affixes(tokenizer) if add_special_tokens else ([], [])
    tokens = docs.map(lambda text: _document_tokens(tokenizer, text, affixes))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if pack:
        rows = ConcatThenSplitIterDataset(
            tokens.to_iter_dataset(_READ_OPTIONS), length_struct={"tokens": seq_len}
        )
        rows = rows.map(lambda row: _packed_row(row, pad_id))
        if shuffle:
            rows = WindowShuffleIterDataset(rows, window_size=shuffle_window, seed=seed)
    else:
        rows = tokens.map(lambda t: _crop(t, seq_len, pad_id)).to_iter_dataset(_READ_OPTIONS)
    return iter(rows.batch(batch_size, drop_remainder=True).map(_with_mask))


def _encode_state(value: Any) -> Any:
    """Grain state -> JSON-safe values; tuples are tagged so they come back as tuples."""
    if isinstance(value, dict):
        return {key: _encode_state(v) for key, v in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_state(v) for v in value]}
    if isinstance(value, list):
        return [_encode_state(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _decode_state(value: Any) -> Any:
    """Inverse of `_encode_state`."""
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode_state(v) for v in value["__tuple__"])
        return {key: _decode_state(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_decode_state(v) for v in value]
    return value


def iterator_state(it: grain.DatasetIterator) -> str:
    """The iterator's position as a JSON string (store it in a checkpoint).

    Tuples in grain's state are preserved: a plain JSON round trip turns them into lists, which
    grain's packing compares against tuples and then restores to the wrong position.
    """
    return json.dumps(_encode_state(it.get_state()))


def restore_iterator(it: grain.DatasetIterator, state: str) -> grain.DatasetIterator:
    """Moves `it` (a fresh iterator from the same `token_batches` call) to `state`; returns it."""
    it.set_state(_decode_state(json.loads(state)))
    return it


# ----------------------------------------------------------------------------- evaluation helpers


def heldout_documents(
    source: Sequence[str] | grain.MapDataset,
    tokenizer,
    num_docs: int,
    seed: int = 0,
    *,
    min_tokens: int = 1,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Token lists (no special tokens) of up to `num_docs` random documents of `source`.

    Documents are visited in a `seed`-determined random order; those shorter than `min_tokens`
    are skipped (e.g. 32 for benchmark prompts); each is cut to `max_tokens` if given. Returns
    fewer than `num_docs` only if the source runs out; raises ValueError if none qualifies.
    """
    order = np.random.default_rng(seed).permutation(len(source))
    docs: list[list[int]] = []
    for index in order:
        if len(docs) == num_docs:
            break
        tokens = _encode(tokenizer, source[int(index)])
        if len(tokens) >= min_tokens:
            docs.append(tokens[:max_tokens])
    if not docs:
        raise ValueError(f"no document in the source has at least {min_tokens} tokens")
    return docs


def _token_arrays(batches: Iterable[Batch | np.ndarray | Sequence[int]]) -> Iterable[np.ndarray]:
    """Flat int arrays of the real tokens: batch dicts (masked) or plain arrays / token lists."""
    for batch in batches:
        if isinstance(batch, dict):
            yield np.asarray(batch["tokens"])[np.asarray(batch["mask"])]
        else:
            yield np.asarray(batch).reshape(-1)


def unigram_loss(
    train_batches: Iterable[Batch | np.ndarray | Sequence[int]],
    heldout_batches: Iterable[Batch | np.ndarray | Sequence[int]],
    vocab_size: int,
) -> float:
    """Held-out cross-entropy (nats/token) of an add-one unigram model fit on the train tokens.

    A base LM that has learned anything beyond token frequencies must beat this. Batches are
    `token_batches` dicts (only masked-in tokens count) or arrays / lists of token ids.
    """
    counts_V = np.ones(vocab_size, np.float64)  # add-one smoothing
    for tokens in _token_arrays(train_batches):
        counts_V += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
    log_probs_V = np.log(counts_V) - np.log(counts_V.sum())
    total, count = 0.0, 0
    for tokens in _token_arrays(heldout_batches):
        total -= log_probs_V[tokens].sum()
        count += tokens.size
    if count == 0:
        raise ValueError("unigram_loss: the held-out batches have no tokens")
    return total / count
