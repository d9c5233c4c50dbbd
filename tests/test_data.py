"""Data layer: specs, TFDS (mocked and really prepared) / files / stdlib sources, the grain
pipeline and its resumable state, the BPE tokenizer, the evaluation helpers, and bad input."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
import transformers

from pass_jax import data, stdlib_corpus
from pass_jax.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_bpe

TINY_FILES = 30
SEQ_LEN = 64
BATCH = 4
VOCAB = 400


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A real TFDS data dir holding the stdlib corpus capped at TINY_FILES train files."""
    data_dir = tmp_path_factory.mktemp("tfds")
    stdlib_corpus.prepare(data_dir, max_files=TINY_FILES)
    return data_dir


@pytest.fixture(scope="module")
def tiny_spec():
    return f"tfds:{stdlib_corpus.NAME}/{stdlib_corpus.config_name(TINY_FILES)}"


@pytest.fixture(scope="module")
def tokenizer(tiny_dir, tiny_spec, tmp_path_factory):
    """A byte-level BPE trained on the tiny corpus, reloaded through AutoTokenizer."""
    out_dir = tmp_path_factory.mktemp("tokenizer")
    train_bpe(iter(data.text_source(tiny_spec, "train", str(tiny_dir))), VOCAB, out_dir)
    return load_tokenizer(out_dir)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def assert_batch_shapes(batch):
    assert set(batch) == {"tokens", "segment_ids", "positions", "mask"}
    for key, dtype in [
        ("tokens", np.int32),
        ("segment_ids", np.int32),
        ("positions", np.int32),
        ("mask", np.bool_),
    ]:
        assert batch[key].shape == (BATCH, SEQ_LEN) and batch[key].dtype == dtype, key


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("stdlib", data.DataSpec("stdlib")),
        ("self", data.DataSpec("self")),
        ("files:src/**/*.py", data.DataSpec("files", pattern="src/**/*.py")),
        ("tfds:lm1b", data.DataSpec("tfds", name="lm1b")),
        (
            "tfds:wikipedia/20230201.en:train",
            data.DataSpec("tfds", "wikipedia/20230201.en", "train"),
        ),
        ("tfds:imdb_reviews:train[:10%]", data.DataSpec("tfds", "imdb_reviews", "train[:10%]")),
    ],
)
def test_parse_spec(spec, expected):
    assert data.parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "wiki", "tfds:", "files:", "hf:gpt2", "stdlib:train"])
def test_unknown_spec_lists_the_forms(spec):
    with pytest.raises(ValueError, match="unknown data spec") as err:
        data.parse_spec(spec)
    for form in data.SPEC_FORMS:
        assert form in str(err.value)


# ----------------------------------------------------------------------------- sources


def test_mock_tfds_feeds_pipeline(tokenizer):
    with tfds.testing.mock_data(num_examples=20):
        texts = data.text_source("tfds:lm1b", "train")
        assert len(texts) == 20 and all(isinstance(t, str) and t for t in texts)
        batch = next(data.token_batches(texts, tokenizer, SEQ_LEN, BATCH, seed=0))
        # No 'text' feature: the first string feature ('description', not 'title' or 'label').
        news = data.text_source("tfds:ag_news_subset", "heldout")
        assert isinstance(news[0], str)
    assert_batch_shapes(batch)
    assert batch["mask"].all()  # packed rows have no padding
    assert tokenizer.eos_token_id in batch["tokens"]


def test_prepared_tfds_feeds_pipeline_without_tensorflow(tiny_dir, tiny_spec, tokenizer):
    import sys

    assert "tensorflow" not in sys.modules
    train = data.text_source(tiny_spec, "train", str(tiny_dir))
    heldout = data.text_source(tiny_spec, "heldout", str(tiny_dir))
    assert len(train) == TINY_FILES and len(heldout) >= 1
    batches = take(data.token_batches(train, tokenizer, SEQ_LEN, BATCH, seed=0), 3)
    for batch in batches:
        assert_batch_shapes(batch)
        assert (batch["tokens"] < len(tokenizer)).all()


def test_heldout_files_never_in_train(tiny_dir):
    corpus = stdlib_corpus.builder(tiny_dir, max_files=TINY_FILES)
    paths = {
        split: {ex["path"].decode() for ex in corpus.as_data_source(split)} for split in data.SPLITS
    }
    assert paths["train"] and paths["heldout"]
    assert not paths["train"] & paths["heldout"]
    assert all(stdlib_corpus.split_of(p) == "train" for p in paths["train"])


def test_full_stdlib_split_is_disjoint_and_excludes_tests(tmp_path, tokenizer):
    splits = stdlib_corpus.split_files(stdlib_corpus.stdlib_files())
    train, heldout = set(splits["train"]), set(splits["heldout"])
    assert len(heldout) > 10 and len(train) > 20 * len(heldout) // 2
    assert not train & heldout
    assert not any(
        part in ("site-packages", "test", "tests")
        for p in train | heldout
        for part in p.split("/")[:-1]
    )
    texts = data.text_source("stdlib", "heldout", str(tmp_path))
    assert len(texts) == len(heldout)
    assert_batch_shapes(next(data.token_batches(texts, tokenizer, SEQ_LEN, BATCH, seed=0)))


def test_files_glob(tmp_path, tokenizer):
    for i in range(12):
        (tmp_path / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * (i + 1))
    (tmp_path / "empty.py").write_text("")
    (tmp_path / "notes.txt").write_text("not matched")
    spec = f"files:{tmp_path}/*.py"
    train, heldout = (list(data.text_source(spec, split)) for split in data.SPLITS)
    assert len(train) + len(heldout) == 12 and heldout  # the empty file is skipped
    assert not set(train) & set(heldout)
    it = data.token_batches(train, tokenizer, SEQ_LEN, BATCH, seed=1, pack=False)
    batch = next(it)
    assert_batch_shapes(batch)
    # Cropped rows: one document each, starting at position 0, padded with the pad id.
    assert (batch["segment_ids"] <= 1).all() and (batch["positions"][:, 0] == 0).all()
    assert (batch["tokens"][~batch["mask"]] == tokenizer.pad_token_id).all()


def test_self_generated_texts():
    calls = []

    def sample_fn(n):
        calls.append(n)
        return [f"text {len(calls)}.{i}" if i != 1 else "" for i in range(n)]  # some are empty

    texts = data.self_generated_texts(sample_fn, num_texts=10, batch_size=4)
    assert len(texts) == 10 and all(texts)
    assert len(data.text_source("self", sample_fn=sample_fn, num_self_texts=5)) == 5


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("pack", [True, False])
def test_resume_gives_identical_batches(tiny_dir, tiny_spec, tokenizer, pack):
    train = data.text_source(tiny_spec, "train", str(tiny_dir))
    if not pack:  # one document per row: short documents keep the test fast
        train = [text[:1000] for text in train]

    def pipeline():
        return data.token_batches(
            train, tokenizer, SEQ_LEN, BATCH, seed=3, pack=pack, shuffle_window=16
        )

    it = pipeline()
    take(it, 5)
    state = data.iterator_state(it)
    expected = take(it, 4)
    assert_batches_equal(take(data.restore_iterator(pipeline(), state), 4), expected)
    assert_batches_equal(take(pipeline(), 9)[5:], expected)  # and a fresh pipeline replays them


def test_seed_changes_order_and_shards_are_disjoint(tokenizer):
    texts = [f"document number {i} " * 3 for i in range(16)]

    def first_tokens(seed, shard_index=0, shard_count=1):
        it = data.token_batches(
            texts,
            tokenizer,
            SEQ_LEN,
            2,
            seed,
            repeat=False,
            pack=False,
            shard_index=shard_index,
            shard_count=shard_count,
        )
        return [
            tuple(row[row_mask])
            for batch in it
            for row, row_mask in zip(batch["tokens"], batch["mask"])
        ]

    assert first_tokens(0) != first_tokens(1)
    assert sorted(first_tokens(0)) == sorted(first_tokens(1))
    shards = [first_tokens(0, i, 2) for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8
    assert sorted(shards[0] + shards[1]) == sorted(first_tokens(0))


def test_documents_get_the_tokenizers_special_tokens(sp_tokenizer, tokenizer):
    """A LLaMA-style tokenizer's <s> starts every document, as ``tokenizer(text)`` has it (then
    </s> ends it); ``add_special_tokens=False`` leaves it out; the byte-level BPE adds none."""
    texts = ["hello world, hello there", "the quick brown fox", "I love pizza and pasta"]
    bos, eos = sp_tokenizer.bos_token_id, sp_tokenizer.eos_token_id

    def rows(tok, **kw):
        batch = next(data.token_batches(texts, tok, SEQ_LEN, 3, 0, shuffle=False, pack=False, **kw))
        return [row[mask].tolist() for row, mask in zip(batch["tokens"], batch["mask"])]

    assert rows(sp_tokenizer) == [sp_tokenizer(t)["input_ids"] + [eos] for t in texts]
    assert all(row[0] == bos for row in rows(sp_tokenizer))
    bare = [sp_tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
    assert rows(sp_tokenizer, add_special_tokens=False) == bare
    assert rows(tokenizer) == [tokenizer.encode(t) + [tokenizer.eos_token_id] for t in texts]
    assert tokenizer.bos_token_id not in sum(rows(tokenizer), [])

    packed = data.token_batches(texts, sp_tokenizer, 16, 2, 0, shuffle=False)
    stream = np.concatenate([b["tokens"][b["mask"]] for b in take(packed, 4)])
    after_eos = stream[1:][stream[:-1] == eos]
    assert stream[0] == bos and len(after_eos) >= 3 and (after_eos == bos).all()


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_saves_reloads_and_round_trips(tmp_path, tokenizer):
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerBase)
    assert len(tokenizer) == VOCAB
    assert [
        tokenizer.unk_token,
        tokenizer.bos_token,
        tokenizer.eos_token,
        tokenizer.pad_token,
    ] == list(SPECIAL_TOKENS)
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3]
    text = "def f(x, y):\n\treturn {'a': x . y}  # ünïcode ✓ , .\n\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    # Cached: a second call reuses the saved tokenizer without reading its texts.
    out_dir = tmp_path / "tok"
    train_bpe(["x = 1\n" * 50, "def g():\n    pass\n" * 50], 300, out_dir)
    reused = train_bpe(iter(()), 300, out_dir)
    assert reused.encode(text) == load_tokenizer(out_dir).encode(text)
    assert (out_dir / "tokenizer.json").exists()


# ----------------------------------------------------------------------------- evaluation helpers


def test_unigram_loss_and_heldout_documents(tiny_dir, tiny_spec, tokenizer):
    uniform = [np.arange(10)] * 3
    assert data.unigram_loss(uniform, uniform, 10) == pytest.approx(np.log(10))
    train = data.text_source(tiny_spec, "train", str(tiny_dir))
    heldout = data.text_source(tiny_spec, "heldout", str(tiny_dir))
    loss = data.unigram_loss(
        take(data.token_batches(train, tokenizer, SEQ_LEN, BATCH, seed=0), 20),
        data.token_batches(heldout, tokenizer, SEQ_LEN, BATCH, 0, shuffle=False, repeat=False),
        len(tokenizer),
    )
    assert 0 < loss < np.log(len(tokenizer))
    docs = data.heldout_documents(train, tokenizer, 5, seed=0, min_tokens=32, max_tokens=40)
    assert len(docs) == 5 and all(32 <= len(d) <= 40 for d in docs)
    assert docs == data.heldout_documents(train, tokenizer, 5, seed=0, min_tokens=32, max_tokens=40)


# ----------------------------------------------------------------------------- bad input


def test_empty_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="empty corpus.*matches no"):
        data.text_source(f"files:{tmp_path}/*.nothing", "train")
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(ValueError, match="empty corpus"):
        data.text_source(f"files:{tmp_path}/*.txt", "train")
    (tmp_path / "c.txt").write_text("a single file lands in one split; the other is empty")
    only_split = stdlib_corpus.split_of(str(tmp_path / "c.txt"))
    other_split = next(s for s in data.SPLITS if s != only_split)
    assert len(data.text_source(f"files:{tmp_path}/*.txt", only_split)) == 1
    with pytest.raises(ValueError, match="empty corpus"):
        data.text_source(f"files:{tmp_path}/*.txt", other_split)
    with pytest.raises(ValueError, match="empty corpus"):
        data.self_generated_texts(lambda n: [""] * n, num_texts=4)


def test_other_bad_input(tokenizer):
    with pytest.raises(ValueError, match="larger than the model's maximum 128"):
        data.check_seq_len(256, max_position=128)
    data.check_seq_len(128, max_position=128)
    with pytest.raises(ValueError, match="unknown split"):
        data.text_source("stdlib", "validation")
    with pytest.raises(ValueError, match="sample_fn"):
        data.text_source("self")
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["x"], 100, "/nonexistent")
    with pytest.raises(ValueError, match="no documents"):
        data.token_batches(["only one"], tokenizer, SEQ_LEN, BATCH, 0, shard_index=1, shard_count=2)


def test_unprepared_or_unknown_tfds_dataset_is_one_clear_error(tmp_path):
    """A TFDS name not prepared in the data dir says so and how to prepare it (TFDS itself
    claims it is prepared as TFRECORD); a misspelled one names the close match in one line (TFDS
    prints every dataset name). Nothing is downloaded or written."""
    with pytest.raises(ValueError) as unprepared:
        data.text_source("tfds:imdb_reviews", "train", str(tmp_path))
    assert str(unprepared.value) == (
        f"TFDS dataset 'imdb_reviews' is not prepared in {tmp_path}; prepare it first "
        f"(downloads it): tfds build imdb_reviews --data_dir {tmp_path} "
        "--file_format array_record"
    )
    with pytest.raises(ValueError) as unknown:
        data.text_source("tfds:imdb_reviewz", "heldout", str(tmp_path))
    assert str(unknown.value).startswith(
        "unknown TFDS dataset 'imdb_reviewz' (did you mean imdb_reviews?); "
    )
    assert "\n" not in str(unknown.value)
    assert list(tmp_path.iterdir()) == []
