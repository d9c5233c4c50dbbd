"""Training losses: base-model next-token CE, and look-ahead (LA) training with packed insertion.

Packed LA input: a causal sequence ``x_0..x_{X-1}`` is followed by M groups of L look-ahead
tokens; insertion point ``p_g`` means group g follows ``x_{p_g}``:

* tokens (T = X + M*L): ``x_0..x_{X-1}``, then group 0's ``LA_1..LA_L``, group 1's, ...;
  the LA rows' input embeddings are the rows of ``la_LxD``.
* positions: ``x_t`` at t; group g's ``LA_i`` at ``p_g + i``.
* mask: the sequence part is causal and never sees LA tokens; group g's ``LA_i`` sees
  ``x_0..x_{p_g}`` and ``LA_1..LA_i`` of its own group only. Each group therefore computes exactly
  what the paper's single-insertion input ``x_0..x_{p_g}, LA_1..LA_L`` would.
* targets: group g's ``LA_i`` predicts ``x_{p_g+1+i}``, valid only when ``p_g+1+i < X``. The
  frozen model's own distribution for that token is its output at sequence row ``p_g+i`` (it sees
  the true prefix ``x_0..x_{p_g+i}``), computed in the same pass. With ``targets='greedy'`` a
  target also needs ``x_{p_g+1}..x_{p_g+i}`` to be the frozen model's own greedy choices, each
  the argmax after the tokens before it: greedy decoding only ever drafts after such a prefix.

Only LA outputs (and those matching base rows) go through the output head, so memory for logits
is ``B x 2ML x V`` instead of ``B x T x V``. Loss arithmetic is float32 whatever the compute dtype.

Shape letters: see ``pass_jax/__init__.py`` (here B batch, X sequence tokens, M insertion groups,
L look-ahead tokens, R = M*L LA rows, T = X + R, D d_model, V vocab; ``T1`` = T - 1).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from .config import ModelConfig, SamplerConfig
from .model import embed_tokens, forward, logits_from_hidden
from .sampling import warp_probs
from .sharding import replicated

LOSS_KINDS = ("ce", "kl")
TARGETS = ("all", "greedy")  # which LA targets count: see the module docstring


def check_loss_kind(kind: str) -> str:
    """Returns ``kind`` if it is one of ``LOSS_KINDS``; else a ValueError naming the choices."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown LA loss kind {kind!r}; expected one of {LOSS_KINDS}")
    return kind


def check_targets(targets: str) -> str:
    """Returns ``targets`` if it is one of ``TARGETS``; else a ValueError naming the choices."""
    if targets not in TARGETS:
        raise ValueError(f"unknown LA targets {targets!r}; expected one of {TARGETS}")
    return targets


def _ratio(num, den):
    return num / jnp.maximum(den, 1.0)


def _token_ce(logits_xV, targets_x):
    """Cross-entropy of float32 logits against integer targets, elementwise."""
    logits_xV = logits_xV.astype(jnp.float32)
    picked = jnp.take_along_axis(logits_xV, targets_x[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_xV, axis=-1) - picked


@functools.partial(jax.jit, static_argnames=("cfg",))
def lm_loss(cfg: ModelConfig, params, tokens_BxT, mask_BxT=None):
    """Next-token cross-entropy for base-model training, mean over valid targets.

    ``mask_BxT`` (optional, bool) marks real tokens (right padding); target ``x_{t+1}`` counts
    when both ``x_t`` and ``x_{t+1}`` are real. Returns ``(loss, {'loss', 'accuracy',
    'num_targets'})``.
    """
    B, T = tokens_BxT.shape
    positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    logits_BxTxV, _ = forward(cfg, params, tokens_BxT, positions_BxT)
    logits_BxT1xV = logits_BxTxV[:, :-1]
    targets_BxT1 = tokens_BxT[:, 1:]
    if mask_BxT is None:
        valid_BxT1 = jnp.ones(targets_BxT1.shape, jnp.float32)
    else:
        valid_BxT1 = (mask_BxT[:, 1:] & mask_BxT[:, :-1]).astype(jnp.float32)
    n = valid_BxT1.sum()
    loss = _ratio((_token_ce(logits_BxT1xV, targets_BxT1) * valid_BxT1).sum(), n)
    hits = (jnp.argmax(logits_BxT1xV, axis=-1) == targets_BxT1) * valid_BxT1
    return loss, {"loss": loss, "accuracy": _ratio(hits.sum(), n), "num_targets": n}


class PackedLayout(NamedTuple):
    """Positions, mask and targets of a packed LA input (see the module docstring)."""

    positions_BxT: jax.Array  # int32
    mask_BxTxT: jax.Array  # bool, True = may attend
    target_idx_BxR: jax.Array  # int32 index into the sequence of each LA row's target (clipped)
    base_row_BxR: jax.Array  # int32 sequence row whose output predicts the same token (clipped)
    valid_BxR: jax.Array  # bool, the target exists (p_g >= 0 and p_g + 1 + i < X)


def packed_layout(ins_BxM: jax.Array, X: int, L: int) -> PackedLayout:
    """Positions, attention mask and targets for X sequence tokens followed by M groups of L LAs.

    LA row r = g*L + (i-1) belongs to group g and is ``LA_i`` (i = 1..L).
    """
    if L < 1:
        raise ValueError(f"number of look-ahead tokens L must be >= 1, got {L}")
    B, M = ins_BxM.shape
    R = M * L
    p_BxR = jnp.repeat(ins_BxM.astype(jnp.int32), L, axis=1)
    i_R = jnp.tile(jnp.arange(1, L + 1, dtype=jnp.int32), M)
    g_R = jnp.repeat(jnp.arange(M, dtype=jnp.int32), L)
    t_X = jnp.arange(X, dtype=jnp.int32)

    positions_BxT = jnp.concatenate([jnp.broadcast_to(t_X, (B, X)), p_BxR + i_R], axis=1)
    seq_rows_XxT = jnp.concatenate([t_X[None, :] <= t_X[:, None], jnp.zeros((X, R), bool)], 1)
    la_sees_seq_BxRxX = t_X[None, None, :] <= p_BxR[:, :, None]
    la_sees_la_RxR = (g_R[:, None] == g_R[None, :]) & (i_R[None, :] <= i_R[:, None])
    la_rows_BxRxT = jnp.concatenate(
        [la_sees_seq_BxRxX, jnp.broadcast_to(la_sees_la_RxR, (B, R, R))], axis=2
    )
    mask_BxTxT = jnp.concatenate(
        [jnp.broadcast_to(seq_rows_XxT, (B, X, X + R)), la_rows_BxRxT], axis=1
    )

    target_BxR = p_BxR + 1 + i_R
    valid_BxR = (p_BxR >= 0) & (target_BxR < X)
    target_idx_BxR = jnp.clip(target_BxR, 0, X - 1)
    base_row_BxR = jnp.clip(target_BxR - 1, 0, X - 1)
    return PackedLayout(positions_BxT, mask_BxTxT, target_idx_BxR, base_row_BxR, valid_BxR)


def packed_hidden(
    cfg: ModelConfig, base_params, la_LxD, tokens_BxX, ins_BxM, remat: str = "none"
) -> tuple[jax.Array, PackedLayout]:
    """One packed forward pass: the final-normed hidden states ``[B, X + R, D]`` (the X
    sequence rows, then the R = M * L LA rows) and the layout (:func:`packed_layout`)."""
    B, X = tokens_BxX.shape
    L, D = la_LxD.shape
    M = ins_BxM.shape[1]
    R = M * L
    lay = packed_layout(ins_BxM, X, L)
    tok_BxXxD = embed_tokens(cfg, base_params, tokens_BxX)
    la_BxRxD = jnp.broadcast_to(jnp.tile(la_LxD, (M, 1)), (B, R, D)).astype(tok_BxXxD.dtype)
    h_BxTxD, _ = forward(
        cfg,
        base_params,
        jnp.zeros((B, X + R), jnp.int32),
        lay.positions_BxT,
        mask=lay.mask_BxTxT,
        embeds_BxTxD=jnp.concatenate([tok_BxXxD, la_BxRxD], axis=1),
        return_hidden=True,
        remat=remat,
    )
    return h_BxTxD, lay


def packed_logits(
    cfg: ModelConfig,
    base_params,
    la_LxD,
    tokens_BxX,
    ins_BxM,
    remat: str = "none",
    targets: str = "all",
):
    """One packed forward pass; float32 logits of the LA rows and the matching base rows
    (``remat``: ``model.REMAT_POLICIES``, per-layer rematerialisation).

    Returns ``(q_BxRxV, p_BxRxV, targets_BxR, valid_BxR)``: ``q`` the LA outputs (draft logits),
    ``p`` the frozen model's logits for the same tokens given the true prefix (stop_gradient),
    the data targets and which of them count (they exist; with ``targets='greedy'`` also the
    tokens between the insertion point and the target are the model's greedy choices, which
    costs the output head on every sequence row).
    """
    X, L = tokens_BxX.shape[1], la_LxD.shape[0]
    R = ins_BxM.shape[1] * L
    h_BxTxD, lay = packed_hidden(cfg, base_params, la_LxD, tokens_BxX, ins_BxM, remat)
    greedy = check_targets(targets) == "greedy"
    h_seq_BxXxD = h_BxTxD[:, :X]
    # the base rows through the output head: the R matching the LA rows, or (greedy) all X
    h_base_BxNxD = (
        h_seq_BxXxD
        if greedy
        else jnp.take_along_axis(h_seq_BxXxD, lay.base_row_BxR[..., None], axis=1)
    )
    both_BxRNxV = logits_from_hidden(
        cfg, base_params, jnp.concatenate([h_BxTxD[:, X:], h_base_BxNxD], axis=1)
    ).astype(jnp.float32)
    q_BxRxV = both_BxRNxV[:, :R]
    base_BxNxV = jax.lax.stop_gradient(both_BxRNxV[:, R:])
    p_BxRxV = (
        jnp.take_along_axis(base_BxNxV, lay.base_row_BxR[..., None], axis=1)
        if greedy
        else base_BxNxV
    )
    targets_BxR = jnp.take_along_axis(tokens_BxX, lay.target_idx_BxR, axis=1)
    valid_BxR = lay.valid_BxR
    if greedy:
        argmax_BxX = jnp.argmax(base_BxNxV, -1)
        valid_BxR = valid_BxR & _greedy_prefix(argmax_BxX, tokens_BxX, ins_BxM, L)
    return q_BxRxV, p_BxRxV, targets_BxR, valid_BxR


def _greedy_prefix(argmax_BxX, tokens_BxX, ins_BxM, L: int):
    """``own_BxR`` bool: for group g's ``LA_i`` (row g*L + i-1), whether ``x_{p_g+1}..x_{p_g+i}``
    are each the frozen model's argmax after the tokens before them (``argmax_BxX``: the
    model's argmax at every sequence row)."""
    B, X = tokens_BxX.shape
    M = ins_BxM.shape[1]
    greedy_BxX = jnp.concatenate(  # x_t is the argmax of row t - 1
        [jnp.zeros((B, 1), bool), tokens_BxX[:, 1:] == argmax_BxX[:, :-1]], axis=1
    )
    idx_BxMxL = ins_BxM[:, :, None] + 1 + jnp.arange(L, dtype=jnp.int32)  # x_{p+1}..x_{p+L}
    ok_BxMxL = jnp.take_along_axis(greedy_BxX, jnp.clip(idx_BxMxL, 0, X - 1).reshape(B, M * L), 1)
    own_BxMxL = jnp.cumprod(ok_BxMxL.reshape(B, M, L), axis=2).astype(bool)
    return own_BxMxL.reshape(B, M * L)


def _per_position(x_BxR, w_BxR, L):
    """Weighted mean per LA position ``[L]`` (rows are laid out group-major)."""
    B, R = x_BxR.shape
    num_L = (x_BxR * w_BxR).reshape(B, R // L, L).sum((0, 1))
    return _ratio(num_L, w_BxR.reshape(B, R // L, L).sum((0, 1)))


@functools.partial(jax.jit, static_argnames=("cfg", "kind", "temperature", "remat", "targets"))
def la_loss(
    cfg: ModelConfig,
    base_params,
    la_LxD,
    tokens_BxX,
    ins_BxM,
    kind: str = "ce",
    temperature: float = 1.0,
    remat: str = "none",
    targets: str = "all",
):
    """Look-ahead training loss on a packed input, mean over valid LA targets.

    ``kind='ce'``: cross-entropy of each LA output against the data token it drafts.
    ``kind='kl'``: KL(p_model || q_LA) between the frozen model's own next-token distribution for
    that token (given the true prefix; no gradient) and the LA output, both at ``temperature``.

    Returns ``(loss, metrics)``; metrics: ``loss``, ``loss_per_position`` [L], ``ce`` and ``kl``
    (both reported whatever ``kind``; ce at temperature 1), ``greedy_acceptance`` [L]
    (argmax agreement with the frozen model), ``num_targets``. ``remat``: per-layer
    rematerialisation of the forward pass (``model.REMAT_POLICIES``; same values). ``targets``:
    which targets count (``TARGETS``, see the module docstring).
    """
    check_loss_kind(kind)
    if not temperature > 0:
        raise ValueError(f"loss temperature must be > 0, got {temperature}")
    L = la_LxD.shape[0]
    q_BxRxV, p_BxRxV, targets_BxR, valid_BxR = packed_logits(
        cfg, base_params, la_LxD, tokens_BxX, ins_BxM, remat, targets
    )
    w_BxR = valid_BxR.astype(jnp.float32)
    n = w_BxR.sum()
    ce_BxR = _token_ce(q_BxRxV, targets_BxR)
    logp_BxRxV = jax.nn.log_softmax(p_BxRxV / temperature, axis=-1)
    logq_BxRxV = jax.nn.log_softmax(q_BxRxV / temperature, axis=-1)
    kl_BxR = (jnp.exp(logp_BxRxV) * (logp_BxRxV - logq_BxRxV)).sum(-1)
    loss_BxR = ce_BxR if kind == "ce" else kl_BxR
    loss = _ratio((loss_BxR * w_BxR).sum(), n)
    agree_BxR = (jnp.argmax(q_BxRxV, -1) == jnp.argmax(p_BxRxV, -1)).astype(jnp.float32)
    metrics = {
        "loss": loss,
        "loss_per_position": _per_position(loss_BxR, w_BxR, L),
        "ce": _ratio((ce_BxR * w_BxR).sum(), n),
        "kl": _ratio((kl_BxR * w_BxR).sum(), n),
        "greedy_acceptance": _per_position(agree_BxR, w_BxR, L),
        "num_targets": n,
    }
    return loss, metrics


@functools.partial(jax.jit, static_argnames=("cfg", "temperature", "top_k", "top_p"))
def acceptance_estimate(
    cfg: ModelConfig,
    base_params,
    la_LxD,
    tokens_BxX,
    ins_BxM,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
):
    """Teacher-forced expected acceptance of each LA position, in one packed pass.

    ``greedy`` [L]: how often argmax q_i equals argmax p, p being the frozen model's distribution
    for the same token given the true prefix. ``sampled`` [L]: mean of sum_v min(p_w(v), q_w(v))
    on the warped distributions (temperature, top-k, top-p as in decoding), the probability that
    speculative sampling accepts a draft drawn from q_w; equal to ``greedy`` at temperature 0.
    ``num_targets`` [L]: how many (row, group) pairs each figure averages.
    """
    sampler = SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    L = la_LxD.shape[0]
    q_BxRxV, p_BxRxV, _, valid_BxR = packed_logits(cfg, base_params, la_LxD, tokens_BxX, ins_BxM)
    w_BxR = valid_BxR.astype(jnp.float32)
    agree_BxR = (jnp.argmax(q_BxRxV, -1) == jnp.argmax(p_BxRxV, -1)).astype(jnp.float32)
    overlap_BxR = jnp.minimum(warp_probs(p_BxRxV, sampler), warp_probs(q_BxRxV, sampler)).sum(-1)
    B, R = w_BxR.shape
    return {
        "greedy": _per_position(agree_BxR, w_BxR, L),
        "sampled": _per_position(overlap_BxR, w_BxR, L),
        "num_targets": w_BxR.reshape(B, R // L, L).sum((0, 1)),
    }


def sample_insertion_points(rng: jax.Array, B: int, M: int, X: int, L: int) -> jax.Array:
    """``ins_BxM`` int32: per row, M distinct insertion points, sorted, uniform over [0, X-2-L].

    The range keeps every LA target inside the sequence (``p + 1 + L <= X - 1``). M = 1 is the
    paper's recipe (one uniformly random insertion point; drawn per row rather than per batch),
    M > 1 is packed training.
    """
    if L < 1 or M < 1:
        raise ValueError(f"need L >= 1 and M >= 1, got L={L}, M={M}")
    choices = X - 1 - L
    if choices < M:
        raise ValueError(
            f"a sequence of X={X} tokens has {max(choices, 0)} insertion points for "
            f"L={L} look-ahead tokens, M={M} were asked for (need X >= M + L + 1)"
        )
    keys = jax.random.uniform(rng, (B, choices))  # [B, choices]
    return jnp.sort(jnp.argsort(keys, axis=1)[:, :M], axis=1).astype(jnp.int32)


@flax.struct.dataclass
class LAState:
    """Training state of the look-ahead embeddings (the only trained parameters)."""

    step: jax.Array  # int32 scalar
    la: jax.Array  # [L, D]
    opt_state: Any


def init_la_state(la_LxD, optimizer: optax.GradientTransformation) -> LAState:
    """Step 0, the given LA embeddings, optimizer state for them alone."""
    return LAState(step=jnp.zeros((), jnp.int32), la=la_LxD, opt_state=optimizer.init(la_LxD))


@functools.cache
def paper_optimizer(
    lr: float = 1e-2, steps: int = 10_000, warmup: int = 2_000, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """AdamW with linear warmup from 0 to ``lr`` over ``warmup`` steps, then cosine decay to 0.

    The paper's recipe (lr 1e-2, 10k steps, 2k warmup). It does not state a weight decay; the
    default 0 avoids pulling the L embeddings towards the origin. The same settings give the
    same object (so ``make_la_train_step`` finds its compiled step again).
    """
    if not 0 <= warmup < steps:
        raise ValueError(f"need 0 <= warmup < steps, got warmup={warmup}, steps={steps}")
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=steps, end_value=0.0
    )
    return optax.adamw(schedule, weight_decay=weight_decay)


def la_train_step(
    la_state: LAState,
    base_params,
    batch: dict,
    rng: jax.Array,
    *,
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    loss_kind: str = "ce",
    num_groups: int = 1,
    temperature: float = 1.0,
    remat: str = "none",
    targets: str = "all",
):
    """One optimizer step on the LA embeddings; base params are constants (never differentiated).

    ``batch['tokens']`` is ``[B, X]``; insertion points come from ``batch['insertion_points']``
    ``[B, M]`` when present, else ``num_groups`` per row are drawn with ``rng`` folded with the
    step number (so one fixed key per run gives a different draw each step and exact resumes).
    Returns ``(la_state, metrics)``: the la_loss metrics plus ``grad_norm``. ``remat``: per-layer
    rematerialisation (``model.REMAT_POLICIES``); ``targets``: which targets count (``TARGETS``).
    """
    tokens_BxX = batch["tokens"]
    B, X = tokens_BxX.shape
    L = la_state.la.shape[0]
    if "insertion_points" in batch:
        ins_BxM = batch["insertion_points"]
    else:
        ins_BxM = sample_insertion_points(
            jax.random.fold_in(rng, la_state.step), B, num_groups, X, L
        )

    def loss_fn(la_LxD):
        return la_loss(
            cfg, base_params, la_LxD, tokens_BxX, ins_BxM, loss_kind, temperature, remat, targets
        )

    (_, metrics), grad_LxD = jax.value_and_grad(loss_fn, has_aux=True)(la_state.la)
    updates, opt_state = optimizer.update(grad_LxD, la_state.opt_state, la_state.la)
    la_LxD = optax.apply_updates(la_state.la, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grad_LxD)}
    return la_state.replace(step=la_state.step + 1, la=la_LxD, opt_state=opt_state), metrics


# Dense bfloat16 peak FLOP/s per chip by JAX device kind, for model FLOPs utilisation.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def la_step_flops(cfg: ModelConfig, B: int, X: int, M: int, L: int, targets: str = "all") -> float:
    """Model FLOPs of one packed look-ahead training step (B rows of X tokens, M groups of L
    LA tokens; multiply-add = 2). The base model is frozen, so the backward pass computes input
    gradients only: each weight matmul costs its forward again (no weight gradient), attention
    twice its forward (dQ, dK, dV, dP); logits for the R = M L LA rows and their R base rows,
    backward through the LA rows only (``targets='greedy'``: forward for every one of the X
    sequence rows instead of the R base rows)."""
    T, R = X + M * L, M * L
    d, hd, H, K = cfg.d_model, cfg.hd, cfg.n_heads, cfg.n_kv_heads
    layer_weights = (
        d * hd * (H + 2 * K) + H * hd * d + (3 if cfg.family == "llama" else 2) * d * cfg.ffn_dim
    )
    weights = 2 * B * T * cfg.n_layers * layer_weights
    attention = 2 * 2 * B * T * T * H * hd * cfg.n_layers  # scores and weighted sum, dense mask
    logits = 2 * B * cfg.vocab_size * d
    head_rows = R + (X if check_targets(targets) == "greedy" else R) + R  # forward, backward
    return 2 * weights + 3 * attention + logits * head_rows


@functools.cache
def make_la_train_step(
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    loss_kind: str = "ce",
    num_groups: int = 1,
    temperature: float = 1.0,
    remat: str = "none",
    mesh: Mesh | None = None,
    targets: str = "all",
):
    """``step(la_state, base_params, batch, rng) -> (la_state, metrics)``, jitted, la_state donated.

    See :func:`la_train_step`; only the LA array is differentiated and has optimizer state.
    With a ``mesh``: the LA state comes back replicated on it (``sharding.replicate`` it
    before the first step), as do the metrics; base params and batch keep the shardings they
    come with (``sharding.shard_params`` / ``hf.load_hf(..., mesh=)``, ``sharding.shard_batch``).
    The same arguments give the same jitted function: a second run in one process (a resumed
    or repeated training) does not compile it again.
    """
    check_loss_kind(loss_kind)
    check_targets(targets)
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    step = functools.partial(
        la_train_step,
        cfg=cfg,
        optimizer=optimizer,
        loss_kind=loss_kind,
        num_groups=num_groups,
        temperature=temperature,
        remat=remat,
        targets=targets,
    )
    if mesh is None:
        return jax.jit(step, donate_argnums=(0,))
    return jax.jit(step, out_shardings=(replicated(mesh),) * 2, donate_argnums=(0,))
