"""Experiment: does a learned per-layer residual offset at the look-ahead rows ("deep" look-ahead,
as deep prompt tuning does) draft better than the paper's input embeddings alone?

Both variants start from the same embeddings (the H200 L = 4 export, whose held-out curve had
flattened) and train for the same steps on the same batches; "shallow" trains only the L input
embeddings (the paper), "deep" also an offset [layers, L, d_model] (zeros at the start) added to
the residual stream of LA_i's row before every layer. Loss: KL to the frozen model (the
project's recipe). Held-out: greedy agreement per LA position and KL on 4 fixed batches of the
stdlib held-out split. Run from the repository root after `make demo`:
`.venv/bin/python results/smollm2/deep-la/deep_la.py {shallow,deep} STEPS LR LA_DIR`."""

import itertools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pass_jax import data, hf, lookahead, losses
from pass_jax.model import (
    Block,
    Norm,
    attention_masks,
    embed_tokens,
    logits_from_hidden,
    rope_tables,
)

variant, steps, lr, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
B, X, M, L = 4, 128, 16, 4
cfg, params = hf.load_hf("artifacts/smollm2/model")
tok = hf.load_tokenizer("artifacts/smollm2/model")
la0 = lookahead.load_lookahead(start, cfg, params)
I, D = cfg.n_layers, cfg.d_model


def fwd(p, tokens_BxX, ins_BxM):
    lay = losses.packed_layout(ins_BxM, X, L)
    R = M * L
    tokx = embed_tokens(cfg, params, tokens_BxX)
    la = jnp.broadcast_to(jnp.tile(p["la"], (M, 1)), (B, R, D))
    x = jnp.concatenate([tokx, la], 1)
    is_la_T = jnp.arange(X + R) >= X
    la_idx_T = jnp.where(is_la_T, (jnp.arange(X + R) - X) % L, 0)
    onehot_TxL = jax.nn.one_hot(la_idx_T, L) * is_la_T[:, None]
    _, call_mask = attention_masks(lay.mask_BxTxT, lay.positions_BxT, None, cfg)
    cos, sin = rope_tables(cfg, lay.positions_BxT)
    ctx = (cos, sin, None, call_mask)

    def layer(x, inp):
        lp, d_LxD = inp
        x = x + (onehot_TxL @ d_LxD)[None]
        y, _ = Block(cfg).apply({"params": lp}, x, None, ctx)
        return y, None

    layer = jax.checkpoint(layer)
    x, _ = jax.lax.scan(layer, x, (params["layers"], p["deep"]))
    h = Norm(cfg).apply({"params": params["final_norm"]}, x)
    hb = jnp.take_along_axis(h[:, :X], lay.base_row_BxR[..., None], axis=1)
    lg = logits_from_hidden(cfg, params, jnp.concatenate([h[:, X:], hb], 1)).astype(jnp.float32)
    return lg[:, :R], jax.lax.stop_gradient(lg[:, R:]), lay.valid_BxR


def loss_fn(p, tokens, ins):
    q, pp, valid = fwd(p, tokens, ins)
    lp, lq = jax.nn.log_softmax(pp), jax.nn.log_softmax(q)
    kl = (jnp.exp(lp) * (lp - lq)).sum(-1)
    w = valid.astype(jnp.float32)
    agree = (q.argmax(-1) == pp.argmax(-1)).astype(jnp.float32)
    acc_L = (agree * w).reshape(B, M, L).sum((0, 1)) / w.reshape(B, M, L).sum((0, 1))
    return (kl * w).sum() / w.sum(), acc_L


p = {"la": la0, "deep": jnp.zeros((I, L, D), jnp.float32)}
sched = optax.warmup_cosine_decay_schedule(0, lr, max(steps // 10, 1), steps)
opt = optax.adamw(sched, weight_decay=0.0)
if variant == "shallow":
    opt = optax.multi_transform({"t": opt, "f": optax.set_to_zero()}, {"la": "t", "deep": "f"})
st = opt.init(p)


@jax.jit
def step(p, st, tokens, ins):
    (l, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tokens, ins)
    u, st = opt.update(g, st, p)
    return optax.apply_updates(p, u), st, l, acc


evalf = jax.jit(loss_fn)
held = data.text_source("stdlib", "heldout", "artifacts/tfds")
evs = list(itertools.islice(data.token_batches(held, tok, X, B, 0, shuffle=False), 4))
key = jax.random.PRNGKey(1)
evset = [
    (
        jnp.asarray(b["tokens"]),
        losses.sample_insertion_points(jax.random.fold_in(key, i), B, M, X, L),
    )
    for i, b in enumerate(evs)
]


def evaluate(p):
    r = [evalf(p, t, i) for t, i in evset]
    return float(np.mean([x[0] for x in r])), np.mean([np.asarray(x[1]) for x in r], 0).round(
        4
    ).tolist()


train = data.text_source("stdlib", "train", "artifacts/tfds")
it = data.token_batches(train, tok, X, B, 0)
rng = jax.random.PRNGKey(0)
log = open(f"results/smollm2/deep-la/{variant}.jsonl", "w")
kl, acc = evaluate(p)
print(json.dumps({"step": 0, "kl": kl, "greedy": acc}), file=log, flush=True)
t0 = time.time()
for s in range(1, steps + 1):
    b = next(it)
    ins = losses.sample_insertion_points(jax.random.fold_in(rng, s), B, M, X, L)
    p, st, l, a = step(p, st, jnp.asarray(b["tokens"]), ins)
    if s % 25 == 0 or s == steps:
        kl, acc = evaluate(p)
        print(
            json.dumps(
                {
                    "step": s,
                    "train_kl": float(l),
                    "kl": kl,
                    "greedy": acc,
                    "s": round(time.time() - t0),
                }
            ),
            file=log,
            flush=True,
        )
