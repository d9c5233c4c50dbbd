"""llama.cpp GGUF files -> Hugging Face model directories (and so -> ``(ModelConfig, params)``).

A GGUF file holds the architecture and the tokenizer as metadata and the weights as (often
quantized) tensors. :func:`convert_gguf` reads one with the ``gguf`` package, dequantizes every
tensor to float32 (F32/F16/BF16/Q8_0/Q4_0/Q4_1/K-quants, whatever ``gguf.quants`` knows), maps
llama-architecture tensor names to Hugging Face names, undoes the row permutation llama.cpp's
converter applies to the q and k projections, and writes a normal Hugging Face directory
(``config.json``, ``model.safetensors``, tokenizer files with the chat template) that
``hf.load_hf`` and transformers both load. :func:`resolve_model` lets every program take a
``.gguf`` path where it takes a model directory: the conversion is cached (keyed by the file's
content hash), so only the first start pays for it.

Tensor names (llama architecture, ``{i}`` = layer):
  token_embd -> model.embed_tokens, output_norm -> model.norm, output -> lm_head (absent: tied),
  blk.{i}.attn_norm / ffn_norm -> input_layernorm / post_attention_layernorm,
  blk.{i}.attn_q/k/v/output -> self_attn.q_proj/k_proj/v_proj/o_proj,
  blk.{i}.ffn_gate/up/down -> mlp.gate_proj/up_proj/down_proj.
GGUF stores a ``[out, in]`` torch weight with ``shape = [in, out]`` (fastest axis first); the
dequantized numpy array is ``[out, in]`` again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import tokenizers
import transformers

from . import hf
from .user_cache import cache_root

SUPPORTED_ARCHITECTURES = ("llama",)
_CONVERTER_VERSION = "2"  # bump when the output of convert_gguf changes

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


class GGUFError(ValueError):
    """A GGUF file this project cannot read: corrupt or truncated, unsupported architecture or
    quantization, missing metadata."""


def is_gguf(path) -> bool:
    """Whether ``path`` names a GGUF file (by its ``.gguf`` suffix)."""
    return str(path).lower().endswith(".gguf")


def _reader(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{str(path)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # ValueError / IndexError / struct errors; a tensor past the end
        # of the file too (its memory map cannot be made)
        raise GGUFError(f"GGUF file {str(path)!r} is corrupt or truncated: {e}") from None
    return reader


def _field(reader, key: str, default: Any = KeyError) -> Any:
    """A metadata value (``contents()``: ints, floats, str, lists); ``default`` when absent,
    or a GGUFError naming the key when no default is given."""
    f = reader.fields.get(key)
    if f is None:
        if default is KeyError:
            raise GGUFError(f"GGUF metadata is missing {key!r}")
        return default
    return f.contents()


def hf_config_dict(reader) -> dict[str, Any]:
    """The ``LlamaConfig`` keyword arguments described by a GGUF file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"unsupported GGUF architecture {arch!r}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    a = lambda key, default=KeyError: _field(reader, f"{arch}.{key}", default)
    if a("rope.scaling.type", None) not in (None, "none") or any(
        t.name == "rope_freqs.weight" for t in reader.tensors
    ):
        raise GGUFError(
            "GGUF files with rope scaling (rope.scaling.* or rope_freqs) are not supported yet"
        )
    n_heads = int(a("attention.head_count"))
    d_model = int(a("embedding_length"))
    tokens = _field(reader, "tokenizer.ggml.tokens", None)
    vocab = a("vocab_size", None) or (len(tokens) if tokens is not None else None)
    if vocab is None:
        raise GGUFError(f"GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    head_dim = int(a("attention.key_length", None) or a("rope.dimension_count", d_model // n_heads))
    names = {t.name for t in reader.tensors}
    tok = lambda key: _field(reader, f"tokenizer.ggml.{key}", None)
    return dict(
        vocab_size=int(vocab),
        hidden_size=d_model,
        intermediate_size=int(a("feed_forward_length")),
        num_hidden_layers=int(a("block_count")),
        num_attention_heads=n_heads,
        num_key_value_heads=int(a("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        max_position_embeddings=int(a("context_length")),
        rms_norm_eps=float(a("attention.layer_norm_rms_epsilon")),
        rope_theta=float(a("rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=tok("bos_token_id"),
        eos_token_id=tok("eos_token_id"),
        pad_token_id=tok("padding_token_id"),
        unk_token_id=tok("unknown_token_id"),
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (``permute`` in its ``convert_hf_to_gguf.py``),
    which reorders each head's rows from the rotate-half rope layout to interleaved pairs.
    ``w`` is a torch-layout weight, ``[out, in]`` (or a bias, ``[out]``)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensors(reader, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every GGUF tensor dequantized to float32 under its Hugging Face name, q/k unpermuted."""
    out: dict[str, np.ndarray] = {}
    unknown = []
    for t in reader.tensors:
        name = _GLOBAL_TENSORS.get(t.name)
        parts = t.name.split(".")
        if (
            name is None
            and len(parts) == 4
            and parts[0] == "blk"
            and parts[1].isdigit()
            and parts[2] in _LAYER_TENSORS
            and parts[3] == "weight"
        ):
            name = f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.weight"
        if name is None:
            unknown.append(t.name)
            continue
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise GGUFError(
                f"tensor {t.name!r} has quantization type {t.tensor_type.name}, "
                f"which the gguf package cannot dequantize: {e}"
            ) from None
        arr = np.asarray(arr, np.float32).reshape(tuple(int(x) for x in reversed(t.shape)))
        if parts[-2:-1] == ["attn_q"]:
            arr = unpermute_rows(arr, config["num_attention_heads"])
        elif parts[-2:-1] == ["attn_k"]:
            arr = unpermute_rows(arr, config["num_key_value_heads"])
        out[name] = np.ascontiguousarray(arr)
    if unknown:
        raise GGUFError(
            f"GGUF file has tensors this converter does not know: "
            f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}"
        )
    return out


def load_tokenizer(path):
    """The transformers tokenizer built from a GGUF file's metadata (chat template kept)."""
    p = Path(path)
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(p.parent), gguf_file=p.name, local_files_only=True
        )
    except Exception as e:  # transformers raises many kinds for bad tokenizer metadata
        raise GGUFError(f"cannot build a tokenizer from the metadata of {str(p)!r}: {e}") from None


def within_vocab(tokenizer, vocab_size: int):
    """``tokenizer`` without added tokens whose ids are past the model's ``vocab_size``.

    transformers' GGUF builder for byte-level BPE adds GPT-2's ``<|endoftext|>`` when the
    vocabulary lacks it, as id ``vocab_size``: text containing it would give an id the model
    has no embedding for. The backend is rebuilt without such tokens (special token roles that
    pointed at them are dropped); a tokenizer with none is returned as is."""
    past = {t for t, i in tokenizer.get_added_vocab().items() if i >= vocab_size}
    if not past:
        return tokenizer
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["id"] < vocab_size]
    backend = tokenizers.Tokenizer.from_str(json.dumps(state))
    kwargs = {
        k: v
        for k, v in tokenizer.init_kwargs.items()
        if k not in ("added_tokens_decoder", "tokenizer_object", "tokenizer_file")
        and not (isinstance(v, str) and v in past)
    }
    return type(tokenizer)(tokenizer_object=backend, **kwargs)


def convert_gguf(path, out_dir) -> Path:
    """Convert a llama-architecture GGUF file into a Hugging Face model directory at
    ``out_dir`` (float32 safetensors, config, tokenizer with its chat template), written
    atomically. Raises :class:`GGUFError` naming the problem for a corrupt or truncated file,
    an unsupported architecture or quantization type, or missing metadata."""
    path = Path(path)
    reader = _reader(path)
    kw = hf_config_dict(reader)
    hf_config = transformers.LlamaConfig(**kw)
    hf_config.architectures = ["LlamaForCausalLM"]
    hf_config.unk_token_id = kw["unk_token_id"]
    tensors = hf_tensors(reader, kw)
    cfg = hf.config_from_hf(hf_config)
    expected = set(hf.checkpoint_names(cfg))
    missing = sorted(expected - set(tensors))
    if missing:
        raise GGUFError(f"GGUF file {str(path)!r} is missing tensors: {', '.join(missing[:8])}")
    tokenizer = load_tokenizer(path) if "tokenizer.ggml.tokens" in reader.fields else None
    tokenizer = tokenizer and within_vocab(tokenizer, cfg.vocab_size)
    return hf.write_hf_dir(hf_config, tensors, out_dir, tokenizer)


def file_digest(path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_model(path, cache_dir=None) -> str:
    """A Hugging Face model directory for ``path``: ``path`` itself unless it is a ``.gguf``
    file, which is converted once into ``cache_dir`` (default ``cache_root()/gguf``) under a
    name keyed by its content hash and reused afterwards. The hash of a file is remembered by
    path, size and modification time, so a later start reads nothing of the file."""
    if not is_gguf(path):
        return str(path)
    p = Path(path)
    root = Path(cache_dir or cache_root() / "gguf")
    stat = p.stat() if p.is_file() else None
    stamp = (
        stat
        and root
        / "digests"
        / hashlib.sha256(f"{p.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[
            :16
        ]
    )
    digest = stamp.read_text().strip() if stamp and stamp.is_file() else None
    if digest is None:
        _reader(p)  # clear errors before hashing or converting
        digest = file_digest(p)
    key = hashlib.sha256(f"{digest}:{_CONVERTER_VERSION}".encode()).hexdigest()[:16]
    out = root / f"{p.stem}-{key}"
    if not (out / "config.json").is_file() or not (out / "model.safetensors").is_file():
        convert_gguf(p, out)
    if not stamp.is_file():  # written last: a failed conversion leaves no shortcut behind
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    return str(out)


__all__ = [
    "GGUFError",
    "SUPPORTED_ARCHITECTURES",
    "is_gguf",
    "hf_config_dict",
    "hf_tensors",
    "unpermute_rows",
    "load_tokenizer",
    "convert_gguf",
    "resolve_model",
    "file_digest",
]
