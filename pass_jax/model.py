"""Decoder-only transformer (LLaMA / Mistral / Qwen2 family and GPT-2) as a Flax Linen module.

The model is a pure function ``(params, tokens[B,T], positions[B,T], cache, mask) -> (logits,
cache)``. Layers run under ``nn.scan`` (compile time independent of depth) and the whole KV cache
rides in the scan carry, so each layer scatters its T new keys/values into the cache in place.

Shape letters: B batch, T tokens in this call, S cache slots, D d_model, H query heads,
K kv heads, G = H // K query heads per kv head, E head_dim, F ffn dim, V vocab, N layers.

Masks: ``mask`` is the in-call block, ``[T, T]`` or ``[B, T, T]`` (True = may attend), causal when
None. With a cache, token t of row b also sees every cache slot ``< cache.lengths[b]``; its own
keys/values land in slot ``cache.lengths[b] + t``. Without a cache only in-call tokens are seen.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .cache import KVCache
from .config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies ``[E/2]`` (with Llama-3 scaling when configured)."""
    E = cfg.hd
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, E, 2, dtype=np.float64) / E))
    rs = cfg.rope_scaling
    if rs is None:
        return inv.astype(np.float32)
    low_wavelen = rs.original_max_position / rs.low_freq_factor
    high_wavelen = rs.original_max_position / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
    smooth = (rs.original_max_position / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(cfg: ModelConfig, positions_BxT: jax.Array):
    """cos, sin tables ``[B, T, E]`` in the rotate-half convention of HF LLaMA."""
    ang_BxTxE2 = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(rope_inv_freq(cfg))
    ang_BxTxE = jnp.concatenate([ang_BxTxE2, ang_BxTxE2], axis=-1)
    return jnp.cos(ang_BxTxE), jnp.sin(ang_BxTxE)


def apply_rope(x_BxTxHxE, cos_BxTxE, sin_BxTxE):
    half = x_BxTxHxE.shape[-1] // 2
    x = x_BxTxHxE.astype(jnp.float32)
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxTxE[:, :, None, :] + rot * sin_BxTxE[:, :, None, :]
    return out.astype(x_BxTxHxE.dtype)


def attention_mask(mask, positions_BxT, cache: KVCache | None, cfg: ModelConfig):
    """Full boolean mask over keys: ``[B, T, S]`` with a cache, ``[B, T, T]`` without."""
    B, T = positions_BxT.shape
    if mask is None:
        mask = jnp.tril(jnp.ones((T, T), bool))
    mask_BxTxT = jnp.broadcast_to(jnp.asarray(mask, bool), (B, T, T))
    if cache is None:
        kpos_BxS, full = positions_BxT, mask_BxTxT
    else:
        S = cache.max_len
        slot_S = jnp.arange(S)
        rel_BxS = slot_S[None, :] - cache.lengths[:, None]
        cached_BxS = rel_BxS < 0
        in_call_BxS = (rel_BxS >= 0) & (rel_BxS < T)
        rel_c = jnp.clip(rel_BxS, 0, T - 1)
        call_BxTxS = jnp.take_along_axis(mask_BxTxT, jnp.broadcast_to(rel_c[:, None, :], (B, T, S)),
                                         axis=2)
        full = cached_BxS[:, None, :] | (in_call_BxS[:, None, :] & call_BxTxS)
        kpos_BxS = jnp.where(cached_BxS, slot_S[None, :],
                             jnp.take_along_axis(positions_BxT, rel_c, axis=1))
    if cfg.sliding_window is not None:
        full = full & (positions_BxT[:, :, None] - kpos_BxS[:, None, :] < cfg.sliding_window)
    return full


class Norm(nn.Module):
    """RMSNorm (llama) or LayerNorm (gpt2); statistics in float32, output in compute dtype."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        pdt = jnp.dtype(cfg.param_dtype)
        x32 = x.astype(jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (cfg.d_model,), pdt)
        if cfg.family == "gpt2":
            bias = self.param("bias", nn.initializers.zeros, (cfg.d_model,), pdt)
            mean = x32.mean(-1, keepdims=True)
            var = ((x32 - mean) ** 2).mean(-1, keepdims=True)
            y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * scale.astype(jnp.float32)
            y = y + bias.astype(jnp.float32)
            return y.astype(cfg.dtype)
        y = x32 * jax.lax.rsqrt((x32 ** 2).mean(-1, keepdims=True) + cfg.norm_eps)
        return (scale.astype(jnp.float32) * y).astype(cfg.dtype)


def _dense(cfg: ModelConfig, features: int, bias: bool, name: str):
    return nn.Dense(features, use_bias=bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    kernel_init=nn.initializers.normal(0.02), name=name)


class Block(nn.Module):
    """One transformer layer; scanned over layers with the KV cache in the carry."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, carry, ctx):
        cfg = self.cfg
        x_BxTxD, k_NxBxSxKxE, v_NxBxSxKxE, layer = carry
        cos, sin, mask_BxTxS, write_b, write_s = ctx
        B, T, _ = x_BxTxD.shape
        H, K, E = cfg.n_heads, cfg.n_kv_heads, cfg.hd
        G = H // K
        attn_bias = cfg.qkv_bias or cfg.family == "gpt2"

        h = Norm(cfg, name="attn_norm")(x_BxTxD)
        q_BxTxHxE = _dense(cfg, H * E, attn_bias, "q")(h).reshape(B, T, H, E)
        k_BxTxKxE = _dense(cfg, K * E, attn_bias, "k")(h).reshape(B, T, K, E)
        v_BxTxKxE = _dense(cfg, K * E, attn_bias, "v")(h).reshape(B, T, K, E)
        if cfg.family == "llama":
            q_BxTxHxE = apply_rope(q_BxTxHxE, cos, sin)
            k_BxTxKxE = apply_rope(k_BxTxKxE, cos, sin)

        if k_NxBxSxKxE is None:  # no cache: attend within the call
            keys_BxSxKxE, vals_BxSxKxE = k_BxTxKxE, v_BxTxKxE
        else:  # write this call's K/V at each row's offset, then read the whole layer
            cdt = k_NxBxSxKxE.dtype
            k_NxBxSxKxE = k_NxBxSxKxE.at[layer, write_b, write_s].set(
                k_BxTxKxE.astype(cdt), mode="drop")
            v_NxBxSxKxE = v_NxBxSxKxE.at[layer, write_b, write_s].set(
                v_BxTxKxE.astype(cdt), mode="drop")
            keys_BxSxKxE = k_NxBxSxKxE[layer].astype(cfg.dtype)
            vals_BxSxKxE = v_NxBxSxKxE[layer].astype(cfg.dtype)

        q_BxTxKxGxE = q_BxTxHxE.reshape(B, T, K, G, E)
        s_BxKxGxTxS = jnp.einsum("btkge,bske->bkgts", q_BxTxKxGxE, keys_BxSxKxE,
                                 preferred_element_type=jnp.float32) / math.sqrt(E)
        s_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], s_BxKxGxTxS, -1e30)
        w_BxKxGxTxS = jax.nn.softmax(s_BxKxGxTxS, axis=-1).astype(cfg.dtype)
        o_BxTxKxGxE = jnp.einsum("bkgts,bske->btkge", w_BxKxGxTxS, vals_BxSxKxE)
        o_bias = cfg.family == "gpt2" or cfg.attn_out_bias  # Qwen2: q/k/v biases, none on o
        o_BxTxD = _dense(cfg, cfg.d_model, o_bias, "o")(
            o_BxTxKxGxE.reshape(B, T, H * E))
        x_BxTxD = x_BxTxD + o_BxTxD

        h = Norm(cfg, name="mlp_norm")(x_BxTxD)
        if cfg.family == "llama":
            gate = _dense(cfg, cfg.ffn_dim, cfg.mlp_bias, "gate")(h)
            up = _dense(cfg, cfg.ffn_dim, cfg.mlp_bias, "up")(h)
            m_BxTxD = _dense(cfg, cfg.d_model, cfg.mlp_bias, "down")(nn.silu(gate) * up)
        else:
            m = nn.gelu(_dense(cfg, cfg.ffn_dim, True, "fc")(h), approximate=True)
            m_BxTxD = _dense(cfg, cfg.d_model, True, "proj")(m)
        x_BxTxD = x_BxTxD + m_BxTxD
        return (x_BxTxD, k_NxBxSxKxE, v_NxBxSxKxE, layer + 1), None


class Transformer(nn.Module):
    """``apply(params, tokens, positions, cache, mask) -> (logits[B,T,V] float32, cache)``."""
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype,
                              embedding_init=nn.initializers.normal(0.02), name="embed")
        if cfg.family == "gpt2":
            self.pos_embed = nn.Embed(cfg.max_position, cfg.d_model, dtype=cfg.dtype,
                                      param_dtype=cfg.param_dtype,
                                      embedding_init=nn.initializers.normal(0.01),
                                      name="pos_embed")
        self.layers = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                              in_axes=nn.broadcast, length=cfg.n_layers)(cfg, name="layers")
        self.final_norm = Norm(cfg, name="final_norm")
        if not cfg.tie_embeddings:
            self.lm_head = _dense(cfg, cfg.vocab_size, False, "lm_head")

    def embed_tokens(self, tokens_BxT):
        """Token embeddings ``[B, T, D]`` (no position information)."""
        return self.embed(tokens_BxT)

    def logits(self, h_BxTxD):
        """Final-normed hidden states -> float32 logits ``[B, T, V]``."""
        if self.cfg.tie_embeddings:
            out = self.embed.attend(h_BxTxD)
        else:
            out = self.lm_head(h_BxTxD)
        return out.astype(jnp.float32)

    def __call__(self, tokens_BxT, positions_BxT, cache: KVCache | None = None, mask=None,
                 embeds_BxTxD=None, return_hidden: bool = False):
        """Run T new tokens per row.

        ``embeds_BxTxD`` (optional) replaces the token-embedding lookup (look-ahead tokens are fed
        this way); position information is still added by the model. With ``return_hidden`` the
        final-normed hidden states ``[B, T, D]`` are returned instead of logits (apply
        ``method='logits'`` to the rows you need).
        """
        cfg = self.cfg
        x = self.embed_tokens(tokens_BxT) if embeds_BxTxD is None else embeds_BxTxD
        x = x.astype(cfg.dtype)
        if cfg.family == "gpt2":
            x = x + self.pos_embed(positions_BxT)
        B, T = positions_BxT.shape
        full_mask = attention_mask(mask, positions_BxT, cache, cfg)
        cos, sin = rope_tables(cfg, positions_BxT)
        if cache is None:
            write_b = write_s = None
            kc = vc = None
        else:
            write_b = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
            write_s = cache.lengths[:, None] + jnp.arange(T)[None, :]
            kc, vc = cache.k, cache.v
        (x, kc, vc, _), _ = self.layers((x, kc, vc, jnp.int32(0)),
                                        (cos, sin, full_mask, write_b, write_s))
        h = self.final_norm(x)
        if cache is not None:
            cache = cache.replace(k=kc, v=vc)
        return (h if return_hidden else self.logits(h)), cache


def init_params(cfg: ModelConfig, rng: jax.Array):
    """Random parameters for ``cfg`` (normal(0.02) weights, unit norms)."""
    model = Transformer(cfg)
    tokens = jnp.zeros((1, 2), jnp.int32)
    return model.init(rng, tokens, jnp.arange(2)[None])["params"]


def forward(cfg: ModelConfig, params, tokens_BxT, positions_BxT, cache=None, mask=None,
            embeds_BxTxD=None, return_hidden=False):
    """Functional entry point: ``Transformer(cfg).apply`` on ``{'params': params}``."""
    return Transformer(cfg).apply({"params": params}, tokens_BxT, positions_BxT, cache, mask,
                                  embeds_BxTxD, return_hidden)


def embed_tokens(cfg: ModelConfig, params, tokens_BxT):
    """Token embeddings ``[B, T, D]`` of the base model."""
    return Transformer(cfg).apply({"params": params}, tokens_BxT, method="embed_tokens")


def logits_from_hidden(cfg: ModelConfig, params, h_BxTxD):
    """Apply the output head to final-normed hidden states."""
    return Transformer(cfg).apply({"params": params}, h_BxTxD, method="logits")
