"""llama.cpp GGUF files: conversion to a Hugging Face directory, parity with a reference built
from the dequantized weights and with transformers' own GGUF loader, the q/k unpermute, the
conversion cache, and clear errors for bad files.

Every GGUF here is written inside the test with the ``gguf`` package, the way llama.cpp's
``convert_hf_to_gguf.py`` writes a llama model: llama metadata keys, llama.cpp tensor names,
q/k rows permuted, a byte-level BPE ("gpt2") tokenizer with a chat template, and a mix of
F32, F16, Q8_0 and Q4_1 tensors. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from conftest import jit_forward

from pass_jax import gguf_file, hf, user_cache
from pass_jax.tokenizer import train_bpe

TOL = 1e-4
Q = gguf.GGMLQuantizationType
LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
TEXT = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))  # three\n"
# Quantization per tensor kind (F32 norms always). Every type here is one transformers' own
# GGUF loader dequantizes too (F32, F16, Q8_0, Q4_1), so both paths read the same file.
QUANT = {
    "token_embd": Q.Q8_0,
    "output": Q.Q8_0,
    "attn_q": Q.Q8_0,
    "attn_k": Q.Q4_1,
    "attn_v": Q.F16,
    "attn_output": Q.Q4_1,
    "ffn_gate": Q.Q8_0,
    "ffn_up": Q.Q4_1,
    "ffn_down": Q.Q8_0,
}
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


# --------------------------------------------------------------------------- llama.cpp's side


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """``permute`` of llama.cpp's ``convert_hf_to_gguf.py`` (LlamaModel), verbatim; ``w`` is
    ``[out, in]`` (or ``[out]``)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def reference_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`llama_cpp_permute`, found by permuting row indices (independent of
    ``gguf_file.unpermute_rows``)."""
    rows = llama_cpp_permute(np.arange(w.shape[0]), n_head)  # permuted[r] = w[rows[r]]
    return w[np.argsort(rows)]


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name of a transformers llama tensor."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf_name.split(".", 3)
    return f"blk.{i}.{HF_TO_GGUF[rest.removesuffix('.weight')]}.weight"


def gguf_tokenizer_fields(tok) -> dict:
    """The llama.cpp tokenizer metadata of a byte-level BPE ``PreTrainedTokenizerFast``."""
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = set(tok.all_special_tokens)
    return dict(
        tokens=tokens,
        merges=merges,
        token_types=[3 if t in special else 1 for t in tokens],  # 3 CONTROL, 1 NORMAL
        bos=tok.bos_token_id,
        eos=tok.eos_token_id,
        unk=tok.unk_token_id,
        pad=tok.pad_token_id,
    )


def write_gguf(
    path,
    state_dict,
    hf_config,
    tok_fields,
    *,
    arch="llama",
    skip=(),
    quant=QUANT,
    chat_template=CHAT_TEMPLATE,
) -> dict[str, np.ndarray]:
    """Write a llama model as llama.cpp does; returns ``{hf name: the float32 weight a reader
    recovers}`` (dequantized, q/k rows back in transformers' order). ``skip``: metadata keys
    (without the ``arch.`` prefix) or tensor names to leave out."""
    c = hf_config
    w = gguf.GGUFWriter(str(path), arch)
    meta = {
        "block_count": c.num_hidden_layers,
        "context_length": c.max_position_embeddings,
        "embedding_length": c.hidden_size,
        "feed_forward_length": c.intermediate_size,
        "attention.head_count": c.num_attention_heads,
        "attention.head_count_kv": c.num_key_value_heads,
        "rope.dimension_count": c.head_dim,
        "vocab_size": c.vocab_size,
    }
    for key, value in meta.items():
        if key not in skip:
            w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.rope.freq_base", c.rope_parameters["rope_theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tok_fields["tokens"])
    w.add_token_types(tok_fields["token_types"])
    w.add_token_merges(tok_fields["merges"])
    w.add_bos_token_id(tok_fields["bos"])
    w.add_eos_token_id(tok_fields["eos"])
    w.add_unk_token_id(tok_fields["unk"])
    w.add_pad_token_id(tok_fields["pad"])
    if chat_template:
        w.add_chat_template(chat_template)
    recovered = {}
    for hf_name, t in state_dict.items():
        name = gguf_name(hf_name)
        if name in skip:
            continue
        arr = t.detach().numpy().astype(np.float32)
        kind = name.split(".")[-2]
        if kind == "attn_q":
            arr = llama_cpp_permute(arr, c.num_attention_heads)
        elif kind == "attn_k":
            arr = llama_cpp_permute(arr, c.num_key_value_heads)
        qtype = Q.F32 if arr.ndim == 1 else quant.get(kind, Q.F32)
        data = arr if qtype == Q.F32 else gguf.quants.quantize(arr, qtype)
        w.add_tensor(name, data, raw_dtype=None if qtype == Q.F32 else qtype)
        back = np.asarray(gguf.quants.dequantize(data, qtype), np.float32).reshape(arr.shape)
        if kind == "attn_q":
            back = reference_unpermute(back, c.num_attention_heads)
        elif kind == "attn_k":
            back = reference_unpermute(back, c.num_key_value_heads)
        recovered[hf_name] = back
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return recovered


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A byte-level BPE of 300 tokens (<unk>, <s>, </s>, <pad> = 0..3), trained here."""
    texts = [TEXT * 3, "hello world, the quick brown fox jumps over the lazy dog\n" * 5]
    return train_bpe(texts, 300, tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory, tokenizer):
    """``gguf_model(tied) -> (file, reference torch model, original torch model)``: a random
    llama written as a GGUF file once per ``tied``; the reference model holds exactly the
    weights the file encodes (dequantized, q/k unpermuted)."""
    made = {}
    fields = gguf_tokenizer_fields(tokenizer)

    def get(tied: bool):
        if tied not in made:
            config = transformers.LlamaConfig(
                **LLAMA,
                vocab_size=len(fields["tokens"]),
                tie_word_embeddings=tied,
                bos_token_id=fields["bos"],
                eos_token_id=fields["eos"],
                pad_token_id=fields["pad"],
            )
            torch.manual_seed(0)
            model = transformers.LlamaForCausalLM(config).eval()
            g = torch.Generator().manual_seed(int(tied))
            with torch.no_grad():  # weights large enough that a wrong mapping shows
                for name, p in model.named_parameters():
                    noise = torch.randn(p.shape, generator=g)
                    p.copy_(
                        1.0 + 0.1 * noise
                        if p.ndim == 1
                        else 0.3 * noise
                        if "q_proj" in name or "k_proj" in name
                        else 0.1 * noise
                    )
            sd = {
                k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")
            }
            path = tmp_path_factory.mktemp("gguf") / f"tiny-{'tied' if tied else 'untied'}.gguf"
            recovered = write_gguf(path, sd, config, fields)
            ref = transformers.LlamaForCausalLM(config).eval()
            missing, unexpected = ref.load_state_dict(
                {k: torch.from_numpy(v) for k, v in recovered.items()}, strict=False
            )
            assert not unexpected and set(missing) <= {"lm_head.weight"}
            if tied:
                ref.tie_weights()
            made[tied] = (path, ref, model)
        return made[tied]

    return get


@pytest.fixture(scope="module")
def converted(gguf_model, tmp_path_factory):
    """``converted(tied) -> HF directory`` written by ``convert_gguf`` (once per ``tied``)."""
    made = {}

    def get(tied: bool):
        if tied not in made:
            path, _, _ = gguf_model(tied)
            made[tied] = gguf_file.convert_gguf(path, tmp_path_factory.mktemp("hf") / "m")
        return made[tied]

    return get


TOKENS = np.array([[1, 17, 40, 200, 5, 99, 120, 7, 250, 33, 64, 2]], np.int32)


def our_logits(model_dir) -> np.ndarray:
    cfg, params = hf.load_hf(model_dir)
    pos = np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape)
    logits, _ = jit_forward(cfg, params, TOKENS, pos)
    return np.asarray(logits)[0]


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(TOKENS, dtype=torch.long)).logits[0].float().numpy()


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("n_head,head_dim", [(1, 2), (4, 16), (2, 16), (9, 64), (3, 8)])
def test_unpermute_inverts_llama_cpp_permute(n_head, head_dim):
    rng = np.random.default_rng(n_head)
    w = rng.standard_normal((n_head * head_dim, 24)).astype(np.float32)
    permuted = llama_cpp_permute(w, n_head)
    if head_dim > 2:
        assert not np.array_equal(permuted, w)  # the check below is not trivially true
    np.testing.assert_array_equal(gguf_file.unpermute_rows(permuted, n_head), w)
    np.testing.assert_array_equal(
        gguf_file.unpermute_rows(permuted, n_head), reference_unpermute(permuted, n_head)
    )
    bias = rng.standard_normal(n_head * head_dim).astype(np.float32)  # 1-D rows work too
    np.testing.assert_array_equal(
        gguf_file.unpermute_rows(llama_cpp_permute(bias, n_head), n_head), bias
    )


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_converted_logits_match_dequantized_reference(gguf_model, converted, tied):
    path, ref, original = gguf_model(tied)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert {Q.F32, Q.F16, Q.Q8_0, Q.Q4_1} <= set(types.values())
    assert ("output.weight" in types) == (not tied)
    out = converted(tied)
    cfg, _ = hf.load_hf(out)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.hd, cfg.ffn_dim) == (
        2,
        64,
        4,
        2,
        16,
        128,
    )
    assert cfg.tie_embeddings == tied and cfg.vocab_size == 300 and cfg.rope_theta == 50000.0
    assert (cfg.bos_token_id, cfg.eos_token_ids, cfg.pad_token_id, cfg.unk_token_id) == (
        1,
        (2,),
        3,
        0,
    )
    ours = our_logits(out)
    ref_logits = torch_logits(ref)
    np.testing.assert_allclose(ours, ref_logits, atol=TOL, rtol=0)
    assert np.abs(ours).max() > 0.5  # not near-zero logits
    # the reference is the quantized model, not the original float one
    assert np.abs(torch_logits(original) - ref_logits).max() > 10 * TOL


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_transformers_gguf_loader_agrees(gguf_model, converted, tied):
    path, _, _ = gguf_model(tied)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True
    ).eval()
    np.testing.assert_allclose(our_logits(converted(tied)), torch_logits(theirs), atol=TOL, rtol=0)


def test_missing_unpermute_is_caught(gguf_model, converted, tmp_path, monkeypatch):
    path, ref, _ = gguf_model(False)
    good = our_logits(converted(False))
    monkeypatch.setattr(gguf_file, "unpermute_rows", lambda w, n_heads: w)
    bad = our_logits(gguf_file.convert_gguf(path, tmp_path / "no-unpermute"))
    assert np.abs(bad - torch_logits(ref)).max() > 100 * TOL
    assert np.abs(bad - good).max() > 100 * TOL


def test_converted_dir_loads_in_transformers_with_tokenizer(gguf_model, converted, tokenizer):
    path, ref, _ = gguf_model(True)
    out = converted(True)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(out))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, local_files_only=True
    ).eval()
    np.testing.assert_allclose(torch_logits(theirs), torch_logits(ref), atol=TOL, rtol=0)
    tok = hf.load_tokenizer(out)
    assert tok is not None
    assert tok.get_vocab() == tokenizer.get_vocab()  # every GGUF token keeps its id
    assert tok.encode(TEXT, add_special_tokens=False) == tokenizer.encode(
        TEXT, add_special_tokens=False
    )
    assert tok.decode(tok.encode(TEXT, add_special_tokens=False)) == TEXT
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert tok.chat_template == CHAT_TEMPLATE
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<s>user\nhi</s>\n<s>assistant\n"
    assert gguf_file.load_tokenizer(path).chat_template == CHAT_TEMPLATE


def test_converted_tokenizer_ids_stay_inside_the_model_vocab(converted):
    """transformers' GGUF byte-level tokenizer builder adds GPT-2's '<|endoftext|>' when the
    vocabulary lacks it, as an id past the model's vocab_size; the converter drops it, and the
    tokenizer still works as before (special tokens, BOS, chat template)."""
    out = converted(True)
    tok = hf.load_tokenizer(out)
    V = hf.load_hf(out)[0].vocab_size
    assert max(tok.encode("<|endoftext|>" + TEXT, add_special_tokens=False)) < V
    assert len(tok) == V


def test_resolve_model_converts_once(gguf_model, tmp_path, monkeypatch):
    path, _, _ = gguf_model(False)
    assert gguf_file.resolve_model(str(tmp_path)) == str(tmp_path)  # a directory: unchanged
    cache = tmp_path / "cache"
    first = gguf_file.resolve_model(path, cache_dir=cache)
    assert Path(first).parent == cache and Path(first).name.startswith(path.stem)
    mtime = (Path(first) / "model.safetensors").stat().st_mtime_ns

    def no_convert(*args, **kwargs):
        raise AssertionError("resolve_model reconverted a cached file")

    hashed = []
    digest = gguf_file.file_digest
    monkeypatch.setattr(gguf_file, "convert_gguf", no_convert)
    monkeypatch.setattr(gguf_file, "file_digest", lambda p: hashed.append(p) or digest(p))
    assert gguf_file.resolve_model(str(path), cache_dir=cache) == first
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == mtime
    assert hashed == []  # the file's hash is remembered: a later start reads none of it
    stat = path.stat()  # touched: hashed again (same bytes, so the same conversion)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert gguf_file.resolve_model(str(path), cache_dir=cache) == first
    assert hashed == [path]
    monkeypatch.undo()
    # the cache is keyed by content: another file under the same name converts anew
    other = tmp_path / "other" / path.name
    other.parent.mkdir()
    shutil.copy(gguf_model(True)[0], other)
    second = gguf_file.resolve_model(other, cache_dir=cache)
    assert second != first and hf.load_hf(second)[0].tie_embeddings
    monkeypatch.setenv(user_cache.CACHE_ENV, str(tmp_path / "env-cache"))
    assert user_cache.cache_root() == tmp_path / "env-cache"


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def tiny_parts(gguf_model, tokenizer):
    """(state dict, config, tokenizer fields) of the untied model, to write variants of."""
    _, _, model = gguf_model(False)
    return model.state_dict(), model.config, gguf_tokenizer_fields(tokenizer)


def test_truncated_file_is_a_clear_error(gguf_model, tmp_path):
    path, _, _ = gguf_model(False)
    data = path.read_bytes()
    # inside the metadata, inside the tensor data, inside the last tensor
    for i, cut in enumerate((200, len(data) // 4, len(data) // 2, len(data) - 100)):
        bad = tmp_path / f"cut{i}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(gguf_file.GGUFError, match="truncated") as e:
            gguf_file.convert_gguf(bad, tmp_path / "out")
        assert str(bad) in str(e.value)
        with pytest.raises(gguf_file.GGUFError, match="truncated"):
            gguf_file.resolve_model(bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF file")
    with pytest.raises(gguf_file.GGUFError, match="is not a GGUF file"):
        gguf_file.convert_gguf(bad, tmp_path / "out")
    assert issubclass(gguf_file.GGUFError, ValueError)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gguf_file.resolve_model(tmp_path / "nowhere.gguf", cache_dir=tmp_path)


def test_unsupported_architecture_is_a_clear_error(tiny_parts, tmp_path):
    sd, config, fields = tiny_parts
    path = tmp_path / "falcon.gguf"
    write_gguf(path, sd, config, fields, arch="falcon")
    with pytest.raises(
        gguf_file.GGUFError, match="unsupported GGUF architecture 'falcon'; supported: llama"
    ):
        gguf_file.convert_gguf(path, tmp_path / "out")


@pytest.mark.parametrize(
    "skip,message",
    [
        (("block_count",), "missing 'llama.block_count'"),
        (("attention.head_count",), "missing 'llama.attention.head_count'"),
        (("blk.1.ffn_down.weight",), "missing tensors: model.layers.1.mlp.down_proj.weight"),
    ],
)
def test_missing_metadata_or_tensor_is_a_clear_error(tiny_parts, tmp_path, skip, message):
    sd, config, fields = tiny_parts
    path = tmp_path / "partial.gguf"
    write_gguf(path, sd, config, fields, skip=skip)
    with pytest.raises(gguf_file.GGUFError, match=message):
        gguf_file.convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
