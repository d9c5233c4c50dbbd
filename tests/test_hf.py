"""Hugging Face checkpoints: parity with transformers' PyTorch models, KV cache, round trips,
and clear errors for bad checkpoint directories."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY, jit_forward, tiny_params
from safetensors.numpy import load_file, save_file

from pass_jax import hf
from pass_jax.cache import init_cache
from pass_jax.config import RopeScaling
from pass_jax.model import unstack_layers

TOL = 1e-4
V = 128
COMMON = dict(vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    **COMMON,
)

HF_CONFIGS = {
    "llama_gqa": lambda: transformers.LlamaConfig(**LLAMA),
    "llama_tied_bias": lambda: transformers.LlamaConfig(
        **{**LLAMA, "num_key_value_heads": 4},
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
    ),
    "llama3_rope": lambda: transformers.LlamaConfig(
        **LLAMA,
        head_dim=32,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "mistral": lambda: transformers.MistralConfig(**LLAMA, sliding_window=4),
    "qwen2": lambda: transformers.Qwen2Config(**LLAMA),
    "gpt2": lambda: transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, **COMMON
    ),
}


def _perturb_torch(model: torch.nn.Module, seed: int):
    """Random weights large enough that a wrong mapping shows: norms ~1, biases nonzero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            is_norm = p.ndim == 1 and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm else noise)


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory):
    """``hf_model(name) -> (dir, torch model)``: a random transformers model saved once."""
    made = {}

    def get(name):
        if name not in made:
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(
                HF_CONFIGS[name](), attn_implementation="eager"
            ).eval()
            _perturb_torch(model, seed=sorted(HF_CONFIGS).index(name))
            d = tmp_path_factory.mktemp(name)
            model.save_pretrained(d)
            made[name] = (d, model)
        return made[name]

    return get


def _torch_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens)[None], dtype=torch.long)).logits[0].numpy()


def _rows(seed, lengths, T):
    """Right-padded random token rows [B, T] (pad id 0) and their lengths."""
    rng = np.random.default_rng(seed)
    toks = np.zeros((len(lengths), T), np.int32)
    for b, n in enumerate(lengths):
        toks[b, :n] = rng.integers(3, V, n)
    return toks


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_parity_padded_batch(hf_model, name):
    d, model = hf_model(name)
    cfg, params = hf.load_hf(d)
    lengths = [11, 6, 1]
    toks = _rows(1, lengths, 11)
    pos = np.broadcast_to(np.arange(11), toks.shape)
    ours, _ = jit_forward(cfg, params, toks, pos)
    ours = np.asarray(ours)
    assert ours.dtype == np.float32
    for b, n in enumerate(lengths):
        ref = _torch_logits(model, toks[b, :n])
        np.testing.assert_allclose(ours[b, :n], ref, atol=TOL, rtol=0)
    assert np.abs(ours).max() > 0.5  # the comparison is not between near-zero logits


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_cached_steps_match_full_forward(hf_model, name):
    """Right-padded prefill of several prompt lengths, then one token per jitted step."""
    d, _ = hf_model(name)
    cfg, params = hf.load_hf(d)
    prompt_lens = np.array([3, 6, 1], np.int32)
    P, steps, total = 6, 5, 11
    seq = _rows(2, [total] * 3, total)
    full, _ = jit_forward(cfg, params, seq, np.broadcast_to(np.arange(total), seq.shape))
    full = np.asarray(full)

    prefill = np.where(np.arange(P)[None] < prompt_lens[:, None], seq[:, :P], 0)
    # the stacked params (nn.scan) and the per-layer ones decoding uses (a layer loop, a cache
    # per layer written before it is read)
    _, per_layer = hf.load_hf(d, stacked=False)
    np.testing.assert_allclose(
        np.asarray(
            jit_forward(cfg, per_layer, seq, np.broadcast_to(np.arange(total), seq.shape))[0]
        ),
        full,
        atol=TOL,
        rtol=0,
    )
    for p, cache in (
        (params, init_cache(cfg, batch=3, max_len=16)),
        (per_layer, init_cache(cfg, batch=3, max_len=16, per_layer=True)),
    ):
        logits, cache = jit_forward(
            cfg, p, prefill, np.broadcast_to(np.arange(P), prefill.shape), cache
        )
        cache = cache.advance(jnp.asarray(prompt_lens))
        for b, n in enumerate(prompt_lens):
            np.testing.assert_allclose(np.asarray(logits)[b, :n], full[b, :n], atol=TOL, rtol=0)
        rows = np.arange(3)
        for j in range(steps):
            pos = prompt_lens + j
            logits, cache = jit_forward(cfg, p, seq[rows, pos][:, None], pos[:, None], cache)
            cache = cache.advance(jnp.ones(3, jnp.int32))
            np.testing.assert_allclose(np.asarray(logits)[:, 0], full[rows, pos], atol=TOL, rtol=0)


def test_config_translation(hf_model):
    d, _ = hf_model("llama3_rope")
    cfg = hf.config_from_hf(hf.read_hf_config(d))
    assert cfg.family == "llama" and cfg.hd == 32 and cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 16)
    assert (cfg.bos_token_id, cfg.eos_token_ids, cfg.pad_token_id) == (1, (2,), 0)
    cfg = hf.config_from_hf(transformers.Qwen2Config(**{**LLAMA, "eos_token_id": [2, 5]}))
    assert cfg.qkv_bias and not cfg.attn_out_bias and cfg.sliding_window is None
    assert cfg.eos_token_ids == (2, 5)
    cfg = hf.config_from_hf(
        transformers.Qwen2Config(
            **LLAMA, use_sliding_window=True, sliding_window=8, max_window_layers=0
        )
    )
    assert cfg.sliding_window == 8
    with pytest.raises(ValueError, match="mixes full and sliding"):
        hf.config_from_hf(
            transformers.Qwen2Config(
                **LLAMA, use_sliding_window=True, sliding_window=8, max_window_layers=1
            )
        )
    with pytest.raises(ValueError, match="rope_type 'linear'"):
        hf.config_from_hf(
            transformers.LlamaConfig(
                **LLAMA, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
            )
        )
    cfg = hf.config_from_hf(hf.read_hf_config(hf_model("gpt2")[0]))
    assert cfg.family == "gpt2" and cfg.tie_embeddings and cfg.ffn_dim == 256


def test_sharded_checkpoint(hf_model, tmp_path):
    d, model = hf_model("llama_gqa")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    cfg, params = hf.load_hf(tmp_path)
    cfg1, params1 = hf.load_hf(d)
    assert cfg == cfg1
    jax.tree.map(np.testing.assert_array_equal, params, params1)


# --------------------------------------------------------------------------- round trip


def _perturbed_params(cfg, seed):
    """``init_params`` plus noise, so norms are not all ones and biases not all zeros."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (np.asarray(x, np.float32) + 0.1 * rng.standard_normal(x.shape)).astype(x.dtype),
        tiny_params(cfg, seed),
    )


ROUND_TRIP = {
    "llama": TINY.replace(
        vocab_size=V,
        max_position=64,
        tie_embeddings=True,
        rope_scaling=RopeScaling(4.0, 1.0, 4.0, 16),
        eos_token_ids=(2, 3),
    ),
    "qwen2": TINY.replace(vocab_size=V, model_type="qwen2", qkv_bias=True, eos_token_ids=(2,)),
    "gpt2": TINY.replace(
        vocab_size=V, n_kv_heads=4, max_position=32, family="gpt2", model_type="gpt2", norm_eps=1e-5
    ),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_round_trip_save_hf(tmp_path, name):
    cfg = ROUND_TRIP[name]
    params = _perturbed_params(cfg, 3)
    out = hf.save_hf(cfg, params, tmp_path / "m")
    cfg2, params2 = hf.load_hf(out)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    # per-layer params load without a stacked copy and save to the same checkpoint
    _, per_layer = hf.load_hf(out, stacked=False)
    jax.tree.map(np.testing.assert_array_equal, per_layer, unstack_layers(params))
    again = hf.save_hf(cfg, per_layer, tmp_path / "again")
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])

    model = transformers.AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="eager"
    ).eval()
    toks = _rows(4, [9], 9)
    ours = np.asarray(jit_forward(cfg, params, toks, np.arange(9)[None])[0])[0]
    np.testing.assert_allclose(ours, _torch_logits(model, toks[0]), atol=TOL, rtol=0)


def test_round_trip_bfloat16_and_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = ROUND_TRIP["llama"].replace(param_dtype="bfloat16")
    params = _perturbed_params(cfg, 5)
    assert jax.tree.leaves(params)[0].dtype == jnp.bfloat16
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>"
    )
    out = hf.save_hf(cfg, params, tmp_path / "m", tokenizer=tok)
    cfg2, params2 = hf.load_hf(out, param_dtype="bfloat16")
    assert cfg2 == cfg
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(
            np.asarray(a, np.float32), np.asarray(b, np.float32)
        ),
        params2,
        params,
    )
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params2))
    tok2 = hf.load_tokenizer(out)
    assert tok2 is not None and tok2("hello world")["input_ids"] == [4, 5]
    no_tok = hf.save_hf(
        ROUND_TRIP["gpt2"], _perturbed_params(ROUND_TRIP["gpt2"], 1), tmp_path / "g"
    )
    assert hf.load_tokenizer(no_tok) is None


def test_save_is_atomic(tmp_path, monkeypatch):
    cfg = ROUND_TRIP["gpt2"]
    out = tmp_path / "m"
    hf.save_hf(cfg, _perturbed_params(cfg, 1), out)
    good = (out / "model.safetensors").read_bytes()
    hf.save_hf(cfg, _perturbed_params(cfg, 2), out)  # overwriting a directory works
    assert (out / "model.safetensors").read_bytes() != good
    good = (out / "model.safetensors").read_bytes()

    def crash(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf, "save_file", crash)  # the writer hf.save_hf calls
    with pytest.raises(RuntimeError, match="disk full"):
        hf.save_hf(cfg, _perturbed_params(cfg, 3), out)
    assert (out / "model.safetensors").read_bytes() == good  # old directory untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dirs left


# --------------------------------------------------------------------------- bad input


def _edit_copy(src, dst, edit):
    """Copy a checkpoint dir and rewrite its model.safetensors through ``edit(tensors)``."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_error_unknown_model_type(tmp_path, hf_model):
    d = shutil.copytree(hf_model("llama_gqa")[0], tmp_path / "m")
    for mt in ("bert", "my_new_arch"):
        conf = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**conf, "model_type": mt}))
        with pytest.raises(ValueError, match=f"unsupported model_type '{mt}'.*llama.*gpt2"):
            hf.load_hf(d)
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        hf.config_from_hf(transformers.BertConfig())
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        hf.to_hf_config(ROUND_TRIP["llama"].replace(model_type="bert"))


def test_error_shape_mismatch(tmp_path, hf_model):
    name = "model.layers.1.self_attn.k_proj.weight"

    def edit(t):
        t[name] = np.zeros((16, 64), np.float32)

    d = _edit_copy(hf_model("llama_gqa")[0], tmp_path / "m", edit)
    with pytest.raises(ValueError, match=rf"'{name}' has shape \[16, 64\], expected \[32, 64\]"):
        hf.load_hf(d)


def test_error_missing_and_extra_tensors(tmp_path, hf_model):
    src = hf_model("qwen2")[0]
    d = _edit_copy(src, tmp_path / "a", lambda t: t.pop("model.layers.0.self_attn.v_proj.bias"))
    with pytest.raises(ValueError, match="missing tensors: model.layers.0.self_attn.v_proj.bias"):
        hf.load_hf(d)

    def extra(t):
        t["model.layers.0.self_attn.o_proj.bias"] = np.zeros(64, np.float32)

    d = _edit_copy(src, tmp_path / "b", extra)
    with pytest.raises(ValueError, match="unexpected tensors.*o_proj.bias"):
        hf.load_hf(d)

    def harmless(t):  # buffers some checkpoints carry are ignored
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)

    hf.load_hf(_edit_copy(src, tmp_path / "c", harmless))


def test_error_pickle_only_and_paths(tmp_path, hf_model):
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(hf_model("gpt2")[0] / "config.json", d / "config.json")
    # Not a valid pickle: if the loader ever unpickled it, the error would differ.
    (d / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="pickle checkpoints are not loaded.*to safetensors"):
        hf.load_hf(d)
    os.remove(d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        hf.load_hf(d)
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        hf.load_hf(d / "config.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf.load_hf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load_hf(tmp_path / "empty")


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_greedy_generate_matches_transformers(hf_model, name):
    """Batched greedy decoding (prompts of different lengths, EOS) == transformers generate."""
    from pass_jax.generation import generate

    d, model = hf_model(name)
    cfg, params = hf.load_hf(d)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, V, n).tolist() for n in (5, 9, 2)]

    def hf_generate(prompt, eos):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                do_sample=False,
                max_new_tokens=12,
                eos_token_id=eos,
                pad_token_id=0,
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            )
        return out[0, len(prompt) :].tolist()

    plain = [hf_generate(p, None) for p in prompts]
    eos = plain[0][len(plain[0]) // 2]  # a token that really occurs: row 0 stops early
    expected = [hf_generate(p, eos) for p in prompts]
    assert len(expected[0]) < 12
    ours = generate(cfg, params, prompts, max_new_tokens=12, eos_ids=(eos,))
    assert ours.tokens == expected


def test_special_token_ids_round_trip(tiny_hf_dir):
    """unk (used to initialise look-ahead embeddings) survives save_hf -> load_hf."""
    cfg = TINY.replace(
        n_layers=1, unk_token_id=0, bos_token_id=1, eos_token_ids=(2, 5), pad_token_id=3
    )
    loaded, _ = hf.load_hf(tiny_hf_dir(cfg))
    assert (
        loaded.unk_token_id,
        loaded.bos_token_id,
        loaded.eos_token_ids,
        loaded.pad_token_id,
    ) == (0, 1, (2, 5), 3)


@pytest.mark.parametrize(
    "damage",
    ["empty", "truncated", "tail cut", "not safetensors", "config not JSON", "config a list"],
)
def test_corrupt_model_files_name_the_file(tmp_path, tiny_hf_dir, damage):
    """A damaged weight or config file is one ValueError that names the file, in the plain and
    the sharded loader (was: safetensors' SafetensorError, json's JSONDecodeError)."""
    from pass_jax.hf import load_hf
    from pass_jax.sharding import make_mesh

    tiny_hf_dir(TINY.replace(n_layers=1), dst=tmp_path / "m")  # a copy: the test damages it
    weights, config = tmp_path / "m" / "model.safetensors", tmp_path / "m" / "config.json"
    data = weights.read_bytes()
    target, content = {
        "empty": (weights, b""),
        "truncated": (weights, data[: len(data) // 2]),
        "tail cut": (weights, data[:-10]),
        "not safetensors": (weights, b"hello world" * 10),
        "config not JSON": (config, b"{not json"),
        "config a list": (config, b"[1, 2]"),
    }[damage]
    target.write_bytes(content)
    message = "is not a readable safetensors file" if target == weights else "is not"
    for load in (load_hf, lambda d: load_hf(d, mesh=make_mesh("fsdp=2,tensor=2,data=2"))):
        with pytest.raises(ValueError, match=message) as e:
            load(tmp_path / "m")
        assert str(target) in str(e.value)
