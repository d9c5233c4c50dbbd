"""Decoder-only transformer (LLaMA / Mistral / Qwen2 family and GPT-2) as a Flax Linen module.

The model is a pure function ``(params, tokens[B,T], positions[B,T], cache, mask) -> (logits,
cache)``. Each layer attends to committed cache slots and to the call's own keys (two score
blocks, one softmax). Two param forms, the same values:

* stacked ``layers/*[I, ...]`` (training): layers run under ``nn.scan`` (compile time independent
  of depth); each layer reads its slice of a stacked ``[I, ...]`` cache and the new keys/values of
  all layers are scattered into it once, after the scan;
* per layer ``layers_{i}/*`` (decoding, ``unstack_layers``): a loop over layers, a tuple of
  per-layer caches, each written by its layer before the layer reads it. On XLA:CPU this avoids
  copying every layer's weights and cache slice out of the stacked arrays on every call; the
  caches are updated in place at batch > 1, while at batch 1 XLA:CPU still copies each layer's
  key cache a few times per step.

Shape letters: see ``pass_jax/__init__.py`` (here B batch, T tokens in this call, S cache slots,
D d_model, H query heads, K kv heads, G = H // K, A head dim, F ffn dim, V vocab, I layers).

Cache dtype: the cache may be narrower than the compute dtype (a bfloat16 cache under float32
compute). Keys and values are rounded to the cache dtype when computed, the call's own ones
too, and cast back to the compute dtype where attention reads them: every product and softmax
runs in the compute dtype, over the values the cache holds.

Masks: ``mask`` is the in-call block, ``[T, T]`` or ``[B, T, T]`` (True = may attend), causal when
None. With a cache, token t of row b also sees every cache slot ``< cache.lengths[b]``; its own
keys/values land in slot ``cache.lengths[b] + t``. Without a cache only in-call tokens are seen.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .cache import KVCache
from .config import ModelConfig
from .sharding import PARAM_RULES, param_shardings


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies ``[A / 2]`` (with Llama-3 scaling when configured)."""
    A = cfg.hd
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, A, 2, dtype=np.float64) / A))
    rs = cfg.rope_scaling
    if rs is None:
        return inv.astype(np.float32)
    low_wavelen = rs.original_max_position / rs.low_freq_factor
    high_wavelen = rs.original_max_position / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
    smooth = (rs.original_max_position / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(cfg: ModelConfig, positions_BxT: jax.Array):
    """cos, sin tables ``[B, T, A]`` in the rotate-half convention of HF LLaMA."""
    ang_half = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(rope_inv_freq(cfg))
    ang_BxTxA = jnp.concatenate([ang_half, ang_half], axis=-1)  # ang_half: [B, T, A / 2]
    return jnp.cos(ang_BxTxA), jnp.sin(ang_BxTxA)


def apply_rope(x_BxTxHxA, cos_BxTxA, sin_BxTxA):
    half = x_BxTxHxA.shape[-1] // 2
    x = x_BxTxHxA.astype(jnp.float32)
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxTxA[:, :, None, :] + rot * sin_BxTxA[:, :, None, :]
    return out.astype(x_BxTxHxA.dtype)


def attention_masks(mask, positions_BxT, cache: KVCache | None, cfg: ModelConfig):
    """Boolean masks: over cache slots ``[B, T, S]`` (None without a cache) and in-call
    ``[B, T, T]``.

    A token sees every committed cache slot (``< lengths``) and the in-call tokens its mask allows;
    with a sliding window, only keys fewer than ``sliding_window`` positions back.
    """
    B, T = positions_BxT.shape
    if mask is None:
        mask = jnp.tril(jnp.ones((T, T), bool))
    call_BxTxT = jnp.broadcast_to(jnp.asarray(mask, bool), (B, T, T))
    win = cfg.sliding_window
    if win is not None:
        call_BxTxT = call_BxTxT & (positions_BxT[:, :, None] - positions_BxT[:, None, :] < win)
    if cache is None:
        return None, call_BxTxT
    slot_S = jnp.arange(cache.max_len)
    cache_BxTxS = jnp.broadcast_to(
        (slot_S[None, :] < cache.lengths[:, None])[:, None, :], (B, T, cache.max_len)
    )
    if win is not None:  # committed slot s holds position s
        cache_BxTxS = cache_BxTxS & (positions_BxT[:, :, None] - slot_S[None, None, :] < win)
    return cache_BxTxS, call_BxTxT


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
        y = x32 * jax.lax.rsqrt((x32**2).mean(-1, keepdims=True) + cfg.norm_eps)
        return (scale.astype(jnp.float32) * y).astype(cfg.dtype)


def _dense(cfg: ModelConfig, features: int, bias: bool, name: str):
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=nn.initializers.normal(0.02),
        name=name,
    )


def _write_kv(kv_cache, slots_BxT, new_k, new_v):
    """Write T new keys/values per row at ``slots[b, t]`` of a ``[..., B, K, S, A]`` cache (one
    layer's, or all I layers' stacked); ``new_k``/``new_v`` are ``[B, T, ..., K, A]``, as
    ``cache[..., b, :, s, :]`` indexes. Slots past the end are dropped."""
    B, T = slots_BxT.shape
    b_BxT = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
    return tuple(
        c.at[..., b_BxT, :, slots_BxT, :].set(new.astype(c.dtype), mode="drop")
        for c, new in zip(kv_cache, (new_k, new_v))
    )


class Block(nn.Module):
    """One transformer layer.

    Scanned (stacked params): the layer's cache slice is read-only; the call's new keys/values
    are returned (scan outputs) and written into the cache once, after all layers, by
    ``Transformer``. Looped (per-layer params and cache, ``slots_BxT`` given): the layer writes
    its new keys/values into its cache first and returns the updated cache; attending to the
    written cache (the new slots are past ``lengths``, so masked out there and seen through the
    in-call block) makes the write the cache's only use before the read. Reading first and
    writing after made XLA:CPU copy every layer's cache every call.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, kv_cache, ctx, slots_BxT=None):
        cfg = self.cfg
        cos, sin, cache_mask_BxTxS, call_mask_BxTxT = ctx
        B, T, _ = x_BxTxD.shape
        H, K, A = cfg.n_heads, cfg.n_kv_heads, cfg.hd
        G = H // K
        qkv_bias = cfg.qkv_bias or cfg.family == "gpt2"
        o_bias = cfg.family == "gpt2" or cfg.attn_out_bias  # Qwen2: q/k/v biases, none on o

        h = Norm(cfg, name="attn_norm")(x_BxTxD)
        q_BxTxHxA = _dense(cfg, H * A, qkv_bias, "q")(h).reshape(B, T, H, A)
        k_BxTxKxA = _dense(cfg, K * A, qkv_bias, "k")(h).reshape(B, T, K, A)
        v_BxTxKxA = _dense(cfg, K * A, qkv_bias, "v")(h).reshape(B, T, K, A)
        if cfg.family == "llama":
            q_BxTxHxA = apply_rope(q_BxTxHxA, cos, sin)
            k_BxTxKxA = apply_rope(k_BxTxKxA, cos, sin)
        if kv_cache is not None and kv_cache[0].dtype != k_BxTxKxA.dtype:
            # the call's keys/values rounded to the cache dtype, as they are stored: a token
            # reads every key and value at the cache's precision whether it was computed in
            # this call or an earlier one, so greedy PaSS still equals greedy autoregressive
            # decoding over a narrower cache (bfloat16 under float32 compute)
            rounded = lambda x: x.astype(kv_cache[0].dtype).astype(x.dtype)
            k_BxTxKxA, v_BxTxKxA = rounded(k_BxTxKxA), rounded(v_BxTxKxA)
        if slots_BxT is not None:  # a per-layer cache: write the new K/V first, then read it
            kv_cache = _write_kv(kv_cache, slots_BxT, k_BxTxKxA, v_BxTxKxA)

        # scores against in-call keys and (when cached) committed cache slots, one softmax
        # (einsum letters as the shape letters; u: the in-call key token, one of T)
        q_BxTxKxGxA = q_BxTxHxA.reshape(B, T, K, G, A)
        scale = 1.0 / math.sqrt(A)
        s_call = (
            jnp.einsum(
                "btkga,buka->bkgtu", q_BxTxKxGxA, k_BxTxKxA, preferred_element_type=jnp.float32
            )
            * scale
        )
        s_call = jnp.where(call_mask_BxTxT[:, None, None], s_call, -1e30)
        if kv_cache is None:
            w_call = jax.nn.softmax(s_call, axis=-1).astype(cfg.dtype)
            o_BxTxKxGxA = jnp.einsum("bkgtu,buka->btkga", w_call, v_BxTxKxA)
        else:
            k_BxKxSxA, v_BxKxSxA = kv_cache
            s_cache = (
                jnp.einsum(
                    "btkga,bksa->bkgts",
                    q_BxTxKxGxA,
                    k_BxKxSxA.astype(cfg.dtype),
                    preferred_element_type=jnp.float32,
                )
                * scale
            )
            s_cache = jnp.where(cache_mask_BxTxS[:, None, None], s_cache, -1e30)
            S = s_cache.shape[-1]
            w = jax.nn.softmax(jnp.concatenate([s_cache, s_call], axis=-1), axis=-1)
            w = w.astype(cfg.dtype)
            o_BxTxKxGxA = jnp.einsum(
                "bkgts,bksa->btkga", w[..., :S], v_BxKxSxA.astype(cfg.dtype)
            ) + jnp.einsum("bkgtu,buka->btkga", w[..., S:], v_BxTxKxA)
        o_BxTxD = _dense(cfg, cfg.d_model, o_bias, "o")(o_BxTxKxGxA.reshape(B, T, H * A))
        x_BxTxD = x_BxTxD + o_BxTxD

        h = Norm(cfg, name="mlp_norm")(x_BxTxD)
        if cfg.family == "llama":
            gate = _dense(cfg, cfg.ffn_dim, cfg.mlp_bias, "gate")(h)
            up = _dense(cfg, cfg.ffn_dim, cfg.mlp_bias, "up")(h)
            m_BxTxD = _dense(cfg, cfg.d_model, cfg.mlp_bias, "down")(nn.silu(gate) * up)
        else:
            m = nn.gelu(_dense(cfg, cfg.ffn_dim, True, "fc")(h), approximate=True)
            m_BxTxD = _dense(cfg, cfg.d_model, True, "proj")(m)
        return x_BxTxD + m_BxTxD, (k_BxTxKxA, v_BxTxKxA) if slots_BxT is None else kv_cache


# Layer rematerialisation for training (``jax.checkpoint`` around each layer): ``layer`` keeps
# only each layer's input and recomputes the layer in the backward pass; ``dots`` also keeps
# the weight matmuls' outputs (no batch dimension) and recomputes the rest (attention, norms,
# activations).
REMAT_POLICIES = {
    "none": None,
    "layer": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nn.Module):
    """``apply(params, tokens, positions, cache, mask) -> (logits[B,T,V] float32, cache)``.

    ``scan_layers``: one ``nn.scan`` over stacked layer params ``layers/*[I, ...]`` (training:
    compile time independent of depth) or a loop over per-layer params ``layers_{i}/*`` with a
    per-layer cache (decoding: see ``unstack_layers``).
    """

    cfg: ModelConfig
    scan_layers: bool = True
    remat: str = "none"  # REMAT_POLICIES: what the backward pass recomputes per layer

    def setup(self):
        cfg = self.cfg
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}")
        block = (
            Block
            if self.remat == "none"
            else nn.remat(
                Block, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers
            )
        )
        self.embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="embed",
        )
        if cfg.family == "gpt2":
            self.pos_embed = nn.Embed(
                cfg.max_position,
                cfg.d_model,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                embedding_init=nn.initializers.normal(0.01),
                name="pos_embed",
            )
        if self.scan_layers:
            self.layers = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast),
                length=cfg.n_layers,
            )(cfg, name="layers")
        else:
            self.layers = [block(cfg, name=f"layers_{i}") for i in range(cfg.n_layers)]
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

    def __call__(
        self,
        tokens_BxT,
        positions_BxT,
        cache: KVCache | None = None,
        mask=None,
        embeds_BxTxD=None,
        return_hidden: bool = False,
    ):
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
        cache_mask, call_mask = attention_masks(mask, positions_BxT, cache, cfg)
        cos, sin = rope_tables(cfg, positions_BxT)
        ctx = (cos, sin, cache_mask, call_mask)
        if cache is not None and isinstance(cache.k, tuple) == self.scan_layers:
            raise ValueError(
                "a per-layer cache (init_cache(..., per_layer=True)) goes with "
                "unstacked params (unstack_layers) and a stacked one with stacked "
                "params"
            )
        s_BxT = None if cache is None else cache.lengths[:, None] + jnp.arange(T)[None, :]
        if self.scan_layers:
            kv = None if cache is None else (cache.k, cache.v)
            x, (k_IxBxTxKxA, v_IxBxTxKxA) = self.layers(x, kv, ctx)
            if cache is not None:  # one in-place scatter of every layer's K/V at each row's offset
                k, v = _write_kv(
                    (cache.k, cache.v),
                    s_BxT,
                    k_IxBxTxKxA.transpose(1, 2, 0, 3, 4),  # [B, T, I, K, A]
                    v_IxBxTxKxA.transpose(1, 2, 0, 3, 4),
                )
                cache = cache.replace(k=k, v=v)
        elif cache is None:
            for block in self.layers:
                x, _ = block(x, None, ctx)
        else:  # each layer writes its own cache
            ks, vs = [], []
            for block, k, v in zip(self.layers, cache.k, cache.v):
                x, (k, v) = block(x, (k, v), ctx, s_BxT)
                ks.append(k)
                vs.append(v)
            cache = cache.replace(k=tuple(ks), v=tuple(vs))
        h = self.final_norm(x)
        return (h if return_hidden else self.logits(h)), cache


@partial(jax.jit, static_argnums=0)
def init_params(cfg: ModelConfig, rng: jax.Array):
    """Random parameters for ``cfg`` (normal(0.02) weights, unit norms), jitted."""
    tokens = jnp.zeros((1, 2), jnp.int32)
    return Transformer(cfg).init(rng, tokens, jnp.arange(2)[None])["params"]


@lru_cache(maxsize=16)
def abstract_params(cfg: ModelConfig):
    """The params tree of ``cfg`` as ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape`` of
    ``init_params``: nothing is allocated), computed once per config and shared: do not edit
    it."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def init_params_sharded(cfg: ModelConfig, rng: jax.Array, mesh: Mesh, rules=PARAM_RULES):
    """Random params created directly in their shards on ``mesh``: ``abstract_params`` for the
    shapes, then ``init_params`` jitted with ``out_shardings`` (no device holds a full copy)."""
    shardings = param_shardings(abstract_params(cfg), mesh, rules)
    return jax.jit(lambda key: init_params(cfg, key), out_shardings=shardings)(rng)


def forward(
    cfg: ModelConfig,
    params,
    tokens_BxT,
    positions_BxT,
    cache=None,
    mask=None,
    embeds_BxTxD=None,
    return_hidden=False,
    remat: str = "none",
):
    """Functional entry point: ``Transformer(cfg).apply`` on ``{'params': params}``, scanned or
    looped over layers as ``params`` are stacked or unstacked; ``remat``: a ``REMAT_POLICIES``
    key (training memory against recomputation; the values are the same)."""
    return Transformer(cfg, is_stacked(params), remat).apply(
        {"params": params}, tokens_BxT, positions_BxT, cache, mask, embeds_BxTxD, return_hidden
    )


def is_stacked(params) -> bool:
    """Whether ``params`` hold stacked layers (``layers/*[I, ...]``) or per-layer ones."""
    return "layers" in params


def unstack_layers(params):
    """Decoding params: the stacked ``layers/*[I, ...]`` split into ``layers_0 .. layers_{I-1}``
    (a copy; drop the stacked tree afterwards). ``forward`` then loops over layers, and
    ``decode.generate`` uses a per-layer cache. On XLA:CPU a scanned layer copies its weights
    and its cache slice out of the stacked arrays on every call; per-layer weights are read
    where they are (``infer.bench --random-model`` measures both). Training keeps the stacked
    form."""
    if not is_stacked(params):
        return params
    stacked = params["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(n):
        out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return out


def stack_layers(params):
    """The inverse of ``unstack_layers`` (training, checkpoints and HF export use this form)."""
    if is_stacked(params):
        return params
    n = sum(k.startswith("layers_") for k in params)
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    out["layers"] = jax.tree.map(
        lambda *a: jnp.stack(a), *(params[f"layers_{i}"] for i in range(n))
    )
    return out


def embed_tokens(cfg: ModelConfig, params, tokens_BxT):
    """Token embeddings ``[B, T, D]`` of the base model."""
    return Transformer(cfg, is_stacked(params)).apply(
        {"params": params}, tokens_BxT, method="embed_tokens"
    )


def logits_from_hidden(cfg: ModelConfig, params, h_BxTxD):
    """Apply the output head to final-normed hidden states."""
    return Transformer(cfg, is_stacked(params)).apply({"params": params}, h_BxTxD, method="logits")
