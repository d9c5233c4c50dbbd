"""Is LA_1's ~40% the paper's drafter or the model? Heads on the hidden state against LA_1.

A look-ahead token LA_1 drafts x_{t+2} from x_0..x_t without seeing x_{t+1}: one learned
input vector that the frozen model's 30 layers read. A Medusa-1 head (Cai et al. 2024,
"Medusa", section 2.1.1) drafts the same token from the same information: a residual block
h + SiLU(W h + b) on the model's last hidden state at x_t, then the frozen output head
(576 x 577 parameters against LA_1's 576). ``--hidden H`` widens the block to an MLP
D -> H -> D; ``--features la1`` puts it on the output of LA_1's row instead of on h_t.

The head is trained on the default set's texts (``runs/self-texts-2``: the model's own greedy
continuations; the same 95% train split) with the default set's loss (KL to the frozen model's
distribution for x_{t+2}), and measured with LA_1 on the same text: the benchmark's 8 held-out
code prompts (32 tokens) and their 64-token greedy continuations. Teacher-forced at every
position (top-k, KL), and as greedy decoding with ``tree-W`` at L = 1 replayed from the
per-position hits (``fused_chain``): greedy decoding is deterministic, so the replay is what
``infer.bench`` measures (for LA_1 it gives the benchmark's figures exactly).

Run from the repository root after ``make demo`` and ``results/smollm2/greedy-self/run2.sh``'s
text generation (``runs/self-texts-2``); ``run.sh`` has the commands. One JSON line on stdout.
"""

import argparse
import json
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from infer.bench import make_prompts
from pass_jax import data, losses
from pass_jax.generation import generate
from pass_jax.hf import load_hf, load_tokenizer
from pass_jax.lookahead import load_lookahead
from pass_jax.model import forward, logits_from_hidden

M = "artifacts/smollm2/model"
LA_DIR = "pretrained/smollm2-135m-instruct/greedy-self-L4"
TEXTS = "files:runs/self-texts-2/*.txt"
X = 128  # tokens per training row, as the default set's training
TOP = (1, 4, 8)  # top-k coverage reported (tree widths)


def init_head(rng, D: int, hidden: int):
    """Medusa's residual block, zero-initialised as in Medusa (the head starts as the model's
    own next-token head). ``hidden`` = 0: one D x D layer, Medusa-1's; > 0: D -> hidden -> D."""
    if hidden == 0:
        return {"w": jnp.zeros((D, D)), "b": jnp.zeros((D,))}
    return {
        "w1": jax.random.normal(rng, (D, hidden)) / np.sqrt(D),
        "b1": jnp.zeros((hidden,)),
        "w2": jnp.zeros((hidden, D)),
    }


def apply_head(head, h_NxD):
    """h + block(h): the hidden state the frozen output head reads."""
    if "w" in head:
        return h_NxD + jax.nn.silu(h_NxD @ head["w"] + head["b"])
    return h_NxD + jax.nn.silu(h_NxD @ head["w1"] + head["b1"]) @ head["w2"]


@partial(jax.jit, static_argnums=0)
def hidden(cfg, params, tokens_BxT):
    """Final-normed hidden states ``[B, T, D]``."""
    B, T = tokens_BxT.shape
    positions_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
    h, _ = forward(cfg, params, tokens_BxT, positions_BxT, return_hidden=True)
    return h


@partial(jax.jit, static_argnums=0)
def la1_hidden(cfg, params, la_1xD, tokens_BxX, ins_BxM):
    """Final-normed hidden states ``[B, M, D]`` of LA_1 inserted after each ``x_t``,
    ``t = ins_BxM`` (one packed pass)."""
    h_BxTxD, _ = losses.packed_hidden(cfg, params, la_1xD, tokens_BxX, ins_BxM)
    return h_BxTxD[:, tokens_BxX.shape[1] :]


def fused_chain(ok_T: np.ndarray, P: int, new_tokens: int) -> tuple[int, int, int]:
    """Greedy decoding with ``tree-W`` at L = 1 (the draft's top W under the root, an LA group
    under every node; W = 1 is the fused L = 1 chain), replayed on the greedy text:
    ``ok_T[t - (P - 1)]`` says whether ``x_{t+2}`` is among the top W drafted after ``x_t``.
    The prefill emits ``x_P``, the drafting call ``x_{P+1}`` (drafting after ``x_P``); then each
    call's root is ``x_r`` with the drafts made after ``x_{r-1}``: one accepted, it emits two
    tokens. Returns (calls, verifying calls, accepted drafts) for ``new_tokens`` tokens, as the
    benchmark counts them."""
    calls, emitted, r, verify, accepted = 2, 2, P + 1, 0, 0
    while emitted < new_tokens:
        ok = bool(ok_T[r - 1 - (P - 1)])
        calls, verify, accepted = calls + 1, verify + 1, accepted + ok
        emitted, r = emitted + 1 + ok, r + 1 + ok
    return calls, verify, accepted


def train_rows(tok, n_texts: int) -> np.ndarray:
    """Up to ``n_texts`` train documents as rows of X tokens (BOS first), padded with -1."""
    docs = data.text_source(TEXTS, "train")
    rows = []
    for i in range(min(n_texts, len(docs))):
        ids = tok(docs[i])["input_ids"][:X]
        rows.append(ids + [-1] * (X - len(ids)))
    return np.array(rows, np.int32)


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=800)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=0)
    ap.add_argument(
        "--features",
        choices=("h", "la1"),
        default="h",
        help="what the head reads: h = the model's hidden state at x_t (Medusa); la1 = the "
        "default set's LA_1 row after x_t (the look-ahead token with a head on its output)",
    )
    ap.add_argument("--save", help="write the trained head's arrays here (.npz)")
    ap.add_argument("--load", help="measure this head (a --save file) instead of training one")
    args = ap.parse_args(argv)
    cfg, params = load_hf(M)
    tok = load_tokenizer(M)
    head_logits = jax.jit(partial(logits_from_hidden, cfg, params))
    la_LxD = load_lookahead(LA_DIR, cfg, params)[:1]

    # hidden states of the training texts: pairs (h_t, h_{t+1}) where x_{t+2} exists
    t0 = time.perf_counter()
    rows = train_rows(tok, 0 if args.load else args.texts)
    hs, hn = [], []
    for i in range(0, len(rows), 16):
        r = rows[i : i + 16]
        tokens = jnp.asarray(np.maximum(r, 0))
        h = np.asarray(hidden(cfg, params, tokens))
        if args.features == "la1":
            ins = jnp.broadcast_to(jnp.arange(X - 2), (len(r), X - 2))
            f = np.asarray(la1_hidden(cfg, params, la_LxD, tokens, ins))
        else:
            f = h
        for b in range(len(r)):
            n = int((r[b] >= 0).sum())
            hs.append(f[b, : n - 2])
            hn.append(h[b, 1 : n - 1])
    hs, hn = (np.concatenate(hs), np.concatenate(hn)) if hs else (np.zeros((0, cfg.d_model)),) * 2
    print(
        f"{len(rows)} texts, {len(hs)} training positions, hidden states in "
        f"{time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )

    opt = optax.adamw(
        optax.warmup_cosine_decay_schedule(
            0, args.lr, min(20, args.steps // 4), max(args.steps, 1)
        ),
        weight_decay=0.0,
    )

    @jax.jit
    def step(head, opt_state, h_NxD, next_NxD):
        p_NxV = jax.nn.softmax(head_logits(next_NxD[None])[0])  # the model's x_{t+2} (frozen)

        def loss_fn(head):
            logq_NxV = jax.nn.log_softmax(head_logits(apply_head(head, h_NxD)[None])[0])
            return jnp.mean(jnp.sum(p_NxV * (jnp.log(p_NxV + 1e-30) - logq_NxV), -1))

        loss, g = jax.value_and_grad(loss_fn)(head)
        upd, opt_state = opt.update(g, opt_state, head)
        return optax.apply_updates(head, upd), opt_state, loss

    head = (
        {k: jnp.asarray(v) for k, v in np.load(args.load).items()}
        if args.load
        else init_head(jax.random.PRNGKey(0), cfg.d_model, args.hidden)
    )
    opt_state = opt.init(head)
    rng = np.random.default_rng(0)
    t0, loss = time.perf_counter(), None
    for s in range(0 if args.load else args.steps):
        idx = rng.integers(0, len(hs), args.batch)
        head, opt_state, loss = step(head, opt_state, jnp.asarray(hs[idx]), jnp.asarray(hn[idx]))
        if s % 50 == 0 or s == args.steps - 1:
            print(
                f"step {s}: KL {float(loss):.3f} ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )

    if args.save:
        np.savez(args.save, **jax.device_get(head))

    # the benchmark's code prompts and their greedy continuations
    prompts, _ = make_prompts(tok, "stdlib", "artifacts/tfds", 8, 32, seed=0)
    res = generate(cfg, params, prompts, max_new_tokens=64, eos_ids=())
    hits = {"la1": np.zeros(len(TOP)), "medusa": np.zeros(len(TOP))}
    kl = {"la1": 0.0, "medusa": 0.0}  # KL(model || draft) for x_{t+2}, summed over positions
    # per width W: calls, verifying calls, accepted drafts
    chain = {name: {k: np.zeros(3, int) for k in TOP} for name in ("la1", "medusa")}
    runs = {name: np.zeros(2, int) for name in ("la1", "medusa")}  # top-1 hits at t; at t and t+1
    n = 0
    for ids, new in zip(prompts, res.tokens, strict=True):
        seq = np.array(ids + list(new), np.int32)
        ts = np.arange(len(ids) - 1, len(seq) - 2)  # x_t's LA_1 / head drafts x_{t+2}
        target = seq[ts + 2]
        if args.features == "la1":
            f = la1_hidden(cfg, params, la_LxD, jnp.asarray(seq[None]), jnp.asarray(ts[None]))[0]
        else:
            f = hidden(cfg, params, jnp.asarray(seq[None]))[0][ts]
        medusa = np.asarray(head_logits(apply_head(head, f)[None])[0])
        q, p, _, valid = losses.packed_logits(
            cfg, params, la_LxD, jnp.asarray(seq[None]), jnp.asarray(ts[None])
        )
        q, p = np.asarray(q[0]), np.asarray(p[0])
        assert valid.all() and (p.argmax(-1) == target).all()  # the text is the model's greedy
        logp = np.asarray(jax.nn.log_softmax(p, -1))
        for name, lg in (("la1", q), ("medusa", medusa)):
            top = np.argsort(-lg, -1)[:, : max(TOP)]
            hits[name] += [(top[:, :k] == target[:, None]).any(-1).sum() for k in TOP]
            hit1 = top[:, 0] == target
            runs[name] += [hit1[:-1].sum(), (hit1[:-1] & hit1[1:]).sum()]
            for k in TOP:
                hit = (top[:, :k] == target[:, None]).any(-1)
                chain[name][k] += fused_chain(hit, len(ids), len(new))
            logq = np.asarray(jax.nn.log_softmax(lg, -1))
            kl[name] += float((np.exp(logp) * (logp - logq)).sum())
        n += len(ts)
    out = {
        "positions": n,
        **{
            f"{name} top-{k}": round(float(h[i] / n), 4)
            for name, h in hits.items()
            for i, k in enumerate(TOP)
        },
        **{f"{name} KL": round(v / n, 4) for name, v in kl.items()},
        **{
            f"{name} P(top-1 right at t+1 | at t)": round(r[1] / r[0], 4)
            for name, r in runs.items()
        },
        **{
            f"{name} tree-{k} L=1": {
                "tokens_per_call": round(len(prompts) * 64 / int(c[0]), 3),
                "acceptance": round(int(c[2]) / int(c[1]), 4),
            }
            for name, by_k in chain.items()
            for k, c in by_k.items()
        },
        "train_texts": len(rows),
        "train_positions": len(hs),
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "hidden": args.hidden,
        "features": args.features,
        "final_train_kl": None if loss is None else round(float(loss), 4),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
