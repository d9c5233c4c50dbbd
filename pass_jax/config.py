"""Frozen configuration dataclasses: model architecture (with named presets) and sampler settings.

Everything here is hashable so it can be a static argument of a jitted function. The programs'
own settings (YAML files, flags) are read by ``pass_jax.program_config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

FAMILIES = ("llama", "gpt2")


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style rope scaling (``rope_type: llama3`` in HF configs)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position: int


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer (LLaMA family or GPT-2).

    ``family='llama'`` covers LLaMA, Mistral and Qwen2 (RMSNorm, RoPE, SwiGLU, GQA);
    ``family='gpt2'`` covers GPT-2 (LayerNorm, learned positions, GELU, biases).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    max_position: int = 2048
    family: str = "llama"
    model_type: str = "llama"  # the HF ``model_type`` this config round-trips to
    head_dim: int | None = None  # default d_model // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2
    attn_out_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral / Qwen2 local attention window
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    unk_token_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; expected one of {FAMILIES}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) not divisible by n_heads ({self.n_heads})")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"ModelConfig.{name} must be float32, bfloat16 or float16")

    @property
    def hd(self) -> int:
        """Per-head dimension."""
        return self.head_dim or self.d_model // self.n_heads

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Parameter count (embeddings included once when tied)."""
        d, f, hd = self.d_model, self.ffn_dim, self.hd
        attn = d * hd * (self.n_heads + 2 * self.n_kv_heads) + self.n_heads * hd * d
        mlp = (3 if self.family == "llama" else 2) * d * f
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        pos = self.max_position * d if self.family == "gpt2" else 0
        return self.n_layers * (attn + mlp) + emb + pos

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Named shapes. Each takes field overrides, e.g. ``ModelConfig.tiny(max_position=512)``.

    @classmethod
    def tiny(cls, **overrides) -> ModelConfig:
        """A random-weights test model: d_model 64, 2 layers, vocab 256 (``bench --random-model
        tiny``)."""
        return cls(
            **{
                **dict(
                    vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128
                ),
                **overrides,
            }
        )

    @classmethod
    def llama_125m(cls, **overrides) -> ModelConfig:
        """A 125M-parameter LLaMA shape with the LLaMA-2 vocabulary (``bench --random-model
        125m``)."""
        return cls(
            **{
                **dict(
                    vocab_size=32000,
                    d_model=768,
                    n_layers=12,
                    n_heads=12,
                    n_kv_heads=4,
                    ffn_dim=2048,
                ),
                **overrides,
            }
        )

    @classmethod
    def llama_7b(cls, **overrides) -> ModelConfig:
        """LLaMA-7B (6.74B parameters), bfloat16 (the memory plan's reference model)."""
        return cls(
            **{
                **dict(
                    vocab_size=32000,
                    d_model=4096,
                    n_layers=32,
                    n_heads=32,
                    n_kv_heads=32,
                    ffn_dim=11008,
                    max_position=4096,
                    dtype="bfloat16",
                    param_dtype="bfloat16",
                ),
                **overrides,
            }
        )

    @classmethod
    def llama3_8b(cls, **overrides) -> ModelConfig:
        """Llama-3-8B (8.03B parameters: 8 KV heads, a 128256-token vocabulary), bfloat16.
        Llama-3.1-8B is the same shape with Llama-3 rope scaling (``rope_scaling``)."""
        return cls(
            **{
                **dict(
                    vocab_size=128256,
                    d_model=4096,
                    n_layers=32,
                    n_heads=32,
                    n_kv_heads=8,
                    ffn_dim=14336,
                    max_position=8192,
                    rope_theta=500000.0,
                    dtype="bfloat16",
                    param_dtype="bfloat16",
                ),
                **overrides,
            }
        )

    @classmethod
    def llama2_70b(cls, **overrides) -> ModelConfig:
        """LLaMA-2-70B (grouped-query attention, 8 KV heads), bfloat16."""
        return cls(
            **{
                **dict(
                    vocab_size=32000,
                    d_model=8192,
                    n_layers=80,
                    n_heads=64,
                    n_kv_heads=8,
                    ffn_dim=28672,
                    max_position=4096,
                    dtype="bfloat16",
                    param_dtype="bfloat16",
                ),
                **overrides,
            }
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        if d.get("rope_scaling") is not None and not isinstance(d["rope_scaling"], RopeScaling):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        if "eos_token_ids" in d:
            d["eos_token_ids"] = tuple(d["eos_token_ids"] or ())
        return cls(**d)


@dataclass(frozen=True)
class SamplerConfig:
    """How next tokens are drawn. ``temperature == 0`` means greedy (argmax).

    top_k = 0 disables top-k; top_p = 1.0 disables nucleus filtering. Both the target
    distribution p and the draft distribution q are warped with the same settings.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
