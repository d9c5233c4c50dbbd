"""Hugging Face checkpoint directories <-> (ModelConfig, params).

A model directory holds ``config.json``, safetensors weights (``model.safetensors``, or shards
listed in ``model.safetensors.index.json``) and optionally tokenizer files. This module reads
such a directory into our ``ModelConfig`` and parameter tree (the one ``model.init_params``
builds) and writes ours back in the same format, so ``transformers``'
``AutoModelForCausalLM.from_pretrained`` loads it.

Supported ``model_type``s: llama, mistral, qwen2 (family ``llama``) and gpt2 (family ``gpt2``).
Pickle checkpoints (``pytorch_model.bin``) are never opened.

Weight layout: torch ``nn.Linear`` stores ``[out, in]``, our Dense kernels are ``[in, out]`` and
stacked over layers (``[I, in, out]``); GPT-2's ``Conv1D`` is already ``[in, out]`` and its fused
``c_attn`` splits into our q, k, v.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from jax.sharding import Mesh, NamedSharding
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from .config import ModelConfig, RopeScaling
from .model import abstract_params, stack_layers
from .sharding import PARAM_RULES, param_spec, put_sharded

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")
_LLAMA_TYPES = ("llama", "mistral", "qwen2")

# Buffers some checkpoints carry that are not parameters (recomputed by every implementation).
_IGNORED_SUFFIXES = (
    ".rotary_emb.inv_freq",
    ".attn.bias",
    ".attn.masked_bias",
    ".crossattention.bias",
    ".crossattention.masked_bias",
)
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
)


# --------------------------------------------------------------------------- config


def _unsupported(model_type) -> ValueError:
    return ValueError(
        f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def _eos_tuple(eos) -> tuple[int, ...]:
    if eos is None:
        return ()
    if isinstance(eos, (list, tuple)):
        return tuple(int(e) for e in eos)
    return (int(eos),)


def _rope_from_hf(hf) -> tuple[float, RopeScaling | None]:
    """(rope_theta, RopeScaling or None) from ``rope_parameters`` (transformers 5) or the older
    ``rope_theta`` + ``rope_scaling`` attributes."""
    params = getattr(hf, "rope_parameters", None)
    if params is None:
        params = getattr(hf, "rope_scaling", None)
    params = dict(params or {})
    theta = params.get("rope_theta", getattr(hf, "rope_theta", None))
    theta = 10000.0 if theta is None else float(theta)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, None
    if rope_type == "llama3":
        try:
            return theta, RopeScaling(
                factor=float(params["factor"]),
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
                original_max_position=int(params["original_max_position_embeddings"]),
            )
        except KeyError as e:
            raise ValueError(f"llama3 rope scaling is missing {e.args[0]!r}: {params}") from None
    raise ValueError(f"unsupported rope_type {rope_type!r} (supported: default, llama3)")


def _sliding_window(hf, model_type: str) -> int | None:
    """The uniform sliding window, or None. Mixed full/sliding layers are not supported."""
    window = getattr(hf, "sliding_window", None)
    if model_type == "llama":
        return None
    if model_type == "qwen2" and not getattr(hf, "use_sliding_window", False):
        return None
    if window is None:
        return None
    layer_types = getattr(hf, "layer_types", None)
    if layer_types:
        kinds = set(layer_types)
        if kinds == {"full_attention"}:
            return None
        if kinds != {"sliding_attention"}:
            raise ValueError(
                f"{model_type} config mixes full and sliding-window attention layers "
                f"(layer_types={list(layer_types)}); only a uniform window is supported"
            )
    return int(window)


def config_from_hf(
    hf_config, dtype: str = "float32", param_dtype: str | None = None
) -> ModelConfig:
    """Translate a ``transformers`` ``PretrainedConfig`` into our ``ModelConfig``.

    llama / mistral / qwen2 map to family ``'llama'`` (Llama-3 rope scaling, GQA, tied
    embeddings, qkv / attention / mlp biases, sliding window), gpt2 to family ``'gpt2'``.
    Raises ``ValueError`` naming the type for any other ``model_type`` and for features our
    model does not implement (other activations or rope types, mixed attention windows, ...).
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise _unsupported(model_type)
    hf = hf_config
    common = dict(
        model_type=model_type,
        vocab_size=int(hf.vocab_size),
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        dtype=dtype,
        param_dtype=param_dtype or dtype,
        bos_token_id=getattr(hf, "bos_token_id", None),
        eos_token_ids=_eos_tuple(getattr(hf, "eos_token_id", None)),
        pad_token_id=getattr(hf, "pad_token_id", None),
        unk_token_id=getattr(hf, "unk_token_id", None),
    )
    if model_type == "gpt2":
        act = getattr(hf, "activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(
                f"gpt2 activation_function {act!r} is not supported "
                "(only the tanh GELU: gelu_new, gelu_pytorch_tanh)"
            )
        if not getattr(hf, "scale_attn_weights", True) or getattr(
            hf, "scale_attn_by_inverse_layer_idx", False
        ):
            raise ValueError(
                "gpt2 configs with scale_attn_weights=False or "
                "scale_attn_by_inverse_layer_idx=True are not supported"
            )
        if getattr(hf, "add_cross_attention", False):
            raise ValueError("gpt2 with cross attention is not supported")
        d = int(hf.n_embd)
        return ModelConfig(
            family="gpt2",
            d_model=d,
            n_layers=int(hf.n_layer),
            n_heads=int(hf.n_head),
            n_kv_heads=int(hf.n_head),
            ffn_dim=int(getattr(hf, "n_inner", None) or 4 * d),
            max_position=int(hf.n_positions),
            norm_eps=float(hf.layer_norm_epsilon),
            **common,
        )

    act = getattr(hf, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{model_type} hidden_act {act!r} is not supported (only silu)")
    theta, scaling = _rope_from_hf(hf)
    n_heads = int(hf.num_attention_heads)
    head_dim = getattr(hf, "head_dim", None)
    if head_dim and int(head_dim) * n_heads == int(hf.hidden_size):
        head_dim = None  # the default; keeps ModelConfig round trips exact
    attention_bias = bool(getattr(hf, "attention_bias", False)) if model_type == "llama" else False
    return ModelConfig(
        family="llama",
        d_model=int(hf.hidden_size),
        n_layers=int(hf.num_hidden_layers),
        n_heads=n_heads,
        n_kv_heads=int(getattr(hf, "num_key_value_heads", None) or n_heads),
        ffn_dim=int(hf.intermediate_size),
        max_position=int(getattr(hf, "max_position_embeddings", 2048)),
        head_dim=int(head_dim) if head_dim else None,
        norm_eps=float(getattr(hf, "rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=(model_type == "qwen2") or attention_bias,
        attn_out_bias=attention_bias,
        mlp_bias=bool(getattr(hf, "mlp_bias", False)) if model_type == "llama" else False,
        sliding_window=_sliding_window(hf, model_type),
        **common,
    )


def to_hf_config(cfg: ModelConfig):
    """The ``transformers`` config object (LlamaConfig, MistralConfig, Qwen2Config or
    GPT2Config, by ``cfg.model_type``) describing ``cfg``.

    Raises ``ValueError`` when ``cfg`` uses a feature the target ``model_type`` cannot express
    (e.g. Qwen2 without qkv biases, Mistral with biases, LLaMA with a sliding window).
    """
    mt = cfg.model_type
    if mt not in SUPPORTED_MODEL_TYPES:
        raise _unsupported(mt)
    want_family = "gpt2" if mt == "gpt2" else "llama"
    if cfg.family != want_family:
        raise ValueError(f"model_type {mt!r} needs family {want_family!r}, got {cfg.family!r}")
    eos = list(cfg.eos_token_ids)
    common = dict(
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
        pad_token_id=cfg.pad_token_id,
        dtype=cfg.param_dtype,
    )
    if cfg.unk_token_id is not None:  # not a standard field: kept as an extra config.json key
        common["unk_token_id"] = cfg.unk_token_id
    if mt == "gpt2":
        if cfg.hd * cfg.n_heads != cfg.d_model or cfg.n_kv_heads != cfg.n_heads:
            raise ValueError("gpt2 needs head_dim * n_heads == d_model and n_kv_heads == n_heads")
        if cfg.sliding_window is not None:
            raise ValueError("gpt2 has no sliding-window attention")
        hf = transformers.GPT2Config(
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.ffn_dim,
            n_positions=cfg.max_position,
            layer_norm_epsilon=cfg.norm_eps,
            activation_function="gelu_new",
            **common,
        )
    else:
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        if cfg.rope_scaling is not None:
            rs = cfg.rope_scaling
            rope = {
                "rope_type": "llama3",
                "rope_theta": cfg.rope_theta,
                "factor": rs.factor,
                "low_freq_factor": rs.low_freq_factor,
                "high_freq_factor": rs.high_freq_factor,
                "original_max_position_embeddings": rs.original_max_position,
            }
        kw = dict(
            hidden_size=cfg.d_model,
            intermediate_size=cfg.ffn_dim,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.hd,
            max_position_embeddings=cfg.max_position,
            rms_norm_eps=cfg.norm_eps,
            hidden_act="silu",
            rope_parameters=rope,
            **common,
        )
        if mt == "llama":
            if cfg.qkv_bias != cfg.attn_out_bias:
                raise ValueError(
                    "llama's attention_bias covers q, k, v and o together; "
                    f"got qkv_bias={cfg.qkv_bias}, attn_out_bias={cfg.attn_out_bias}"
                )
            if cfg.sliding_window is not None:
                raise ValueError("llama has no sliding-window attention; use model_type mistral")
            hf = transformers.LlamaConfig(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias, **kw)
        elif mt == "mistral":
            if cfg.qkv_bias or cfg.attn_out_bias or cfg.mlp_bias:
                raise ValueError("mistral has no attention or mlp biases")
            hf = transformers.MistralConfig(sliding_window=cfg.sliding_window, **kw)
        else:  # qwen2
            if not cfg.qkv_bias or cfg.attn_out_bias or cfg.mlp_bias:
                raise ValueError("qwen2 has q/k/v biases and no o or mlp biases")
            hf = transformers.Qwen2Config(
                use_sliding_window=cfg.sliding_window is not None,
                sliding_window=cfg.sliding_window,
                max_window_layers=0,
                **kw,
            )
    hf.architectures = [
        {
            "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM",
            "gpt2": "GPT2LMHeadModel",
        }[mt]
    ]
    return hf


# --------------------------------------------------------------------------- weight layout


@dataclass(frozen=True)
class _Tensor:
    """One checkpoint tensor: its name (``{i}`` = layer index), our param paths, conversion."""

    name: str
    paths: tuple[tuple[str, ...], ...]  # our params it feeds (several for gpt2's fused qkv)
    kind: str  # 'copy' | 'transpose' | 'split' (concatenated along the last axis)
    per_layer: bool


def _layout(cfg: ModelConfig, param_keys: set[tuple[str, ...]]) -> tuple[str, list[_Tensor]]:
    """(prefix of the base model's names, checkpoint tensors) for ``cfg``."""
    tensors: list[_Tensor] = []

    def add(name, path, kind="copy", per_layer=False):
        paths = path if isinstance(path[0], tuple) else (path,)
        if all(p in param_keys for p in paths):
            tensors.append(_Tensor(name, paths, kind, per_layer))

    if cfg.family == "gpt2":
        prefix = "transformer."
        add("wte.weight", ("embed", "embedding"))
        add("wpe.weight", ("pos_embed", "embedding"))
        add("ln_f.weight", ("final_norm", "scale"))
        add("ln_f.bias", ("final_norm", "bias"))
        for hf, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            add(f"h.{{i}}.{hf}.weight", ("layers", ours, "scale"), per_layer=True)
            add(f"h.{{i}}.{hf}.bias", ("layers", ours, "bias"), per_layer=True)
        for leaf in ("kernel", "bias"):
            suffix = "weight" if leaf == "kernel" else "bias"
            add(
                f"h.{{i}}.attn.c_attn.{suffix}",
                tuple(("layers", p, leaf) for p in ("q", "k", "v")),
                "split",
                True,
            )
            for hf, ours in (("attn.c_proj", "o"), ("mlp.c_fc", "fc"), ("mlp.c_proj", "proj")):
                add(f"h.{{i}}.{hf}.{suffix}", ("layers", ours, leaf), per_layer=True)
    else:
        prefix = "model."
        add("embed_tokens.weight", ("embed", "embedding"))
        add("norm.weight", ("final_norm", "scale"))
        add("layers.{i}.input_layernorm.weight", ("layers", "attn_norm", "scale"), per_layer=True)
        add(
            "layers.{i}.post_attention_layernorm.weight",
            ("layers", "mlp_norm", "scale"),
            per_layer=True,
        )
        for hf, ours in (
            ("self_attn.q_proj", "q"),
            ("self_attn.k_proj", "k"),
            ("self_attn.v_proj", "v"),
            ("self_attn.o_proj", "o"),
            ("mlp.gate_proj", "gate"),
            ("mlp.up_proj", "up"),
            ("mlp.down_proj", "down"),
        ):
            add(f"layers.{{i}}.{hf}.weight", ("layers", ours, "kernel"), "transpose", True)
            add(f"layers.{{i}}.{hf}.bias", ("layers", ours, "bias"), per_layer=True)
    add("lm_head.weight", ("lm_head", "kernel"), "transpose")
    return prefix, tensors


def _hf_shape(t: _Tensor, shapes: dict) -> tuple[int, ...]:
    """The checkpoint shape of ``t`` (one layer's slice for per-layer tensors)."""
    ours = [shapes[p][1:] if t.per_layer else shapes[p] for p in t.paths]
    if t.kind == "transpose":
        return tuple(ours[0][::-1])
    if t.kind == "split":
        return tuple(ours[0][:-1]) + (sum(s[-1] for s in ours),)
    return tuple(ours[0])


def _param_shapes(cfg: ModelConfig):
    tree = abstract_params(cfg)
    flat = {
        tuple(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    return {k: tuple(v.shape) for k, v in flat.items()}


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


# --------------------------------------------------------------------------- reading


def _check_model_dir(model_dir) -> Path:
    d = Path(model_dir)
    if not d.exists():
        raise FileNotFoundError(f"model directory {str(d)!r} does not exist")
    if not d.is_dir():
        hint = (
            " (a GGUF file: convert it with gguf_file.resolve_model, as the programs do for "
            "--model)"
            if d.suffix == ".gguf"
            else ""
        )
        raise NotADirectoryError(
            f"{str(d)!r} is not a directory (expected a Hugging Face model "
            f"directory with config.json and *.safetensors){hint}"
        )
    if not (d / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(d)!r} has no config.json; not a Hugging Face model directory"
        )
    return d


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; anything else: ValueError naming the file."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")
    return value


def _weight_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map'")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (d / f).is_file()]
        if missing:
            raise FileNotFoundError(f"shards listed in {index.name} are missing: {missing}")
        return [d / f for f in files]
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise ValueError(
            f"{str(d)!r} only has pickle checkpoints ({', '.join(pickles)}); pickle checkpoints "
            "are not loaded (unpickling can run arbitrary code); convert to safetensors first, "
            "e.g. in a trusted environment AutoModelForCausalLM.from_pretrained(dir)"
            ".save_pretrained(new_dir), which writes model.safetensors"
        )
    others = sorted(p.name for p in d.glob("*.safetensors"))
    raise FileNotFoundError(
        f"{str(d)!r} has no model.safetensors or model.safetensors.index.json"
        + (f" (found {others})" if others else "")
    )


def read_hf_config(model_dir):
    """``transformers`` config of a local model directory (no network). The ``model_type`` is
    checked before transformers parses the file, so unknown types get our error."""
    d = _check_model_dir(model_dir)
    raw = _read_json(d / "config.json")
    if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise _unsupported(raw.get("model_type"))
    return transformers.AutoConfig.from_pretrained(str(d), local_files_only=True)


def load_hf(
    model_dir,
    dtype: str = "float32",
    param_dtype: str | None = None,
    stacked: bool = True,
    mesh: Mesh | None = None,
    rules=PARAM_RULES,
):
    """Load a local Hugging Face model directory into ``(ModelConfig, params)``.

    ``config.json`` is read with ``transformers.AutoConfig`` (local only), weights from
    ``model.safetensors`` or the shards of ``model.safetensors.index.json`` (never pickles).
    ``dtype`` is the compute dtype, ``param_dtype`` (default: ``dtype``) the dtype the params are
    cast to. ``stacked=False`` gives per-layer params (``model.unstack_layers``, for decoding)
    with no stacked copy on the device (the host reads each weight stacked, once). Raises a
    clear error for a missing directory or config, pickle-only checkpoints, an unsupported
    ``model_type``, and missing, unexpected or mis-shaped tensors. A ``.gguf`` file is first
    converted to such a directory by ``gguf_file.resolve_model`` (cached).

    The checkpoint is read into host numpy arrays (one host copy of the model), then each leaf
    is handed to its device(s) and freed, so host memory peaks at one copy plus one leaf. With a
    ``mesh``, every weight goes straight into its shards by the partition ``rules``
    (``sharding.PARAM_RULES``): no device holds more than its shard, and with several processes
    each one reads the files and transfers only its addressable slices.
    """
    d = _check_model_dir(model_dir)
    cfg = config_from_hf(read_hf_config(d), dtype=dtype, param_dtype=param_dtype)
    files = _weight_files(d)
    with contextlib.ExitStack() as stack:
        flat = _read_tensors(d, cfg, files, stack, stacked)
    if mesh is None:
        place = lambda path, arr: jnp.asarray(arr)
    else:
        ms = dict(mesh.shape)
        place = lambda path, arr: put_sharded(
            arr, NamedSharding(mesh, param_spec("/".join(path), arr.shape, ms, rules))
        )
    return cfg, _unflatten({p: place(p, flat.pop(p)) for p in list(flat)})


def _open_safetensors(path: Path):
    """``safe_open(path)``; a file safetensors cannot read (empty, truncated, not safetensors):
    ValueError naming it."""
    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path} is not a readable safetensors file (empty, truncated or corrupt): {e}"
        ) from None


def _read_tensors(
    d: Path, cfg: ModelConfig, files: list[Path], stack, stacked: bool = True
) -> dict:
    """Checkpoint tensors -> our flat ``{param path: numpy array}``, with all the checks;
    ``stacked=False``: ``('layers_{i}', ...)`` paths holding views of layer i."""
    handles = [stack.enter_context(_open_safetensors(f)) for f in files]
    where: dict[str, int] = {}
    for i, h in enumerate(handles):
        for k in h.keys():
            where[k] = i

    shapes = _param_shapes(cfg)
    prefix, layout = _layout(cfg, set(shapes))
    canon = {(k[len(prefix) :] if k.startswith(prefix) else k): k for k in where}

    pdt = jnp.dtype(cfg.param_dtype)
    out = {p: np.empty(s, pdt) for p, s in shapes.items()}
    used: set[str] = set()
    missing: list[str] = []
    for t in layout:
        want = _hf_shape(t, shapes)
        for i in range(cfg.n_layers) if t.per_layer else [None]:
            name = t.name.format(i=i)
            key = canon.get(name)
            if key is None:
                missing.append(prefix + name if name != "lm_head.weight" else name)
                continue
            used.add(key)
            h = handles[where[key]]
            got = tuple(h.get_slice(key).get_shape())
            if got != want:
                raise ValueError(
                    f"tensor {key!r} has shape {list(got)}, expected {list(want)} "
                    f"for this config ({cfg.model_type}, d_model={cfg.d_model}, "
                    f"vocab={cfg.vocab_size}, heads={cfg.n_heads}/{cfg.n_kv_heads})"
                )
            arr = h.get_tensor(key)
            if t.kind == "transpose":
                arr = arr.T
            parts = [arr]
            if t.kind == "split":
                sizes = np.cumsum([shapes[p][-1] for p in t.paths])[:-1]
                parts = np.split(arr, sizes, axis=-1)
            for p, part in zip(t.paths, parts):
                if i is None:
                    out[p][...] = part.astype(pdt)
                else:
                    out[p][i] = part.astype(pdt)
    if missing:
        shown = ", ".join(missing[:8]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 8 else ""
        )
        raise ValueError(f"checkpoint {str(d)!r} is missing tensors: {shown}")
    extra = sorted(k for k in where if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if cfg.tie_embeddings:  # a tied head saved anyway duplicates the embedding
        extra = [k for k in extra if k != "lm_head.weight"]
    if extra:
        shown = ", ".join(extra[:8]) + (f", ... ({len(extra)} in all)" if len(extra) > 8 else "")
        raise ValueError(
            f"checkpoint {str(d)!r} has unexpected tensors (not part of a "
            f"{cfg.model_type} model of this config): {shown}"
        )
    return out if stacked else _per_layer(out, cfg.n_layers)


def _per_layer(flat: dict, n_layers: int) -> dict:
    """Flat ``('layers', ...)`` entries ``[I, ...]`` -> ``('layers_{i}', ...)`` views of layer i
    (the flat form of ``model.unstack_layers``)."""
    out = {}
    for path, arr in flat.items():
        if path[0] == "layers":
            out.update({(f"layers_{i}", *path[1:]): arr[i] for i in range(n_layers)})
        else:
            out[path] = arr
    return out


def load_tokenizer(model_dir):
    """``transformers.AutoTokenizer`` of a local model directory, or None
    without tokenizer files."""
    d = Path(model_dir)
    if not d.is_dir():
        raise NotADirectoryError(f"{str(d)!r} is not a directory")
    if not any((d / f).is_file() for f in _TOKENIZER_FILES):
        return None
    return transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)


# --------------------------------------------------------------------------- writing


def hf_state_dict(cfg: ModelConfig, params) -> dict[str, np.ndarray]:
    """Our params as a ``{checkpoint name: numpy array}`` dict in the HF layout of
    ``cfg.model_type`` (full ``*ForCausalLM`` names; no ``lm_head`` when tied)."""
    params = stack_layers(params)
    pdt = jnp.dtype(cfg.param_dtype)  # tensors are stored in the dtype config.json declares
    flat = {
        tuple(k.key for k in path): np.asarray(leaf).astype(pdt, copy=False)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    shapes = _param_shapes(cfg)
    if set(flat) != set(shapes):
        raise ValueError(
            f"params do not match the config: missing "
            f"{sorted(set(shapes) - set(flat))}, extra {sorted(set(flat) - set(shapes))}"
        )
    for p, s in shapes.items():
        if flat[p].shape != s:
            raise ValueError(f"param {'/'.join(p)} has shape {flat[p].shape}, expected {s}")
    prefix, layout = _layout(cfg, set(shapes))
    out: dict[str, np.ndarray] = {}
    for t in layout:
        for i in range(cfg.n_layers) if t.per_layer else [None]:
            parts = [flat[p] if i is None else flat[p][i] for p in t.paths]
            arr = np.concatenate(parts, axis=-1) if t.kind == "split" else parts[0]
            if t.kind == "transpose":
                arr = arr.T
            name = t.name.format(i=i)
            full = name if name == "lm_head.weight" else prefix + name
            out[full] = np.ascontiguousarray(arr)
    return out


def checkpoint_names(cfg: ModelConfig) -> list[str]:
    """The tensor names a Hugging Face checkpoint of ``cfg`` holds (no ``lm_head`` when tied)."""
    prefix, layout = _layout(cfg, set(_param_shapes(cfg)))
    names = []
    for t in layout:
        for i in range(cfg.n_layers) if t.per_layer else [None]:
            name = t.name.format(i=i)
            names.append(name if name == "lm_head.weight" else prefix + name)
    return names


def save_hf(cfg: ModelConfig, params, out_dir, tokenizer=None) -> Path:
    """Write ``cfg`` + ``params`` as a Hugging Face model directory at ``out_dir``.

    Writes ``config.json`` (via the matching transformers config class), ``generation_config.json``,
    ``model.safetensors`` (params in ``cfg.param_dtype``) and the tokenizer files if
    ``tokenizer`` is given; see :func:`write_hf_dir` for the atomic write. Returns the path.
    """
    return write_hf_dir(to_hf_config(cfg), hf_state_dict(cfg, params), out_dir, tokenizer)


def write_hf_dir(hf_config, tensors: dict[str, np.ndarray], out_dir, tokenizer=None) -> Path:
    """Write a transformers config, ``{checkpoint name: array}`` tensors and a tokenizer as a
    Hugging Face model directory at ``out_dir``.

    Everything is written to a temporary sibling directory first and then renamed into place,
    so a crash never leaves a half-written directory where a good one was. Returns the path.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{str(out)!r} exists and is not a directory")
    tag = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    old = out.parent / f".{out.name}.old-{tag}"
    try:
        tmp.mkdir()
        hf_config.save_pretrained(str(tmp))
        try:
            gen = transformers.GenerationConfig.from_model_config(hf_config)
            gen.save_pretrained(str(tmp))
        except Exception:  # generation config is a convenience only
            pass
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "config_from_hf",
    "to_hf_config",
    "read_hf_config",
    "load_hf",
    "load_tokenizer",
    "hf_state_dict",
    "save_hf",
    "write_hf_dir",
    "checkpoint_names",
]
