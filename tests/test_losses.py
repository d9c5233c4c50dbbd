"""LA training losses: packed == separate passes, the packed mask, training works, base frozen.

The packed LA logits also match transformers' PyTorch llama run on the paper's single-insertion
input (``inputs_embeds``).

Compilation dominates the run time on CPU, so each jitted function is compiled once per module
(fixtures with module scope) and reused.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY, random_la, tiny_params

from pass_jax import losses
from pass_jax.lookahead import init_lookahead
from pass_jax.model import embed_tokens, forward, init_params

UNK = 1  # never appears in the corpus
HOT = 5  # the frequent token of the synthetic "runs" corpus
CFG = TINY.replace(max_position=64, unk_token_id=UNK)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def runs_batch(rng, B, X, run=4):
    """Synthetic corpus: runs of `run` equal tokens; a run's token is HOT half the time, else
    uniform over [2, V). A base model learns to copy the current token; LA embeddings can learn
    at least the skewed marginal, the [UNK] initialisation cannot."""
    k_tok, k_off, k_hot = jax.random.split(rng, 3)
    run_tokens = jax.random.randint(k_tok, (B, X // run + 2), 2, CFG.vocab_size)
    run_tokens = jnp.where(jax.random.uniform(k_hot, run_tokens.shape) < 0.5, HOT, run_tokens)
    offset = jax.random.randint(k_off, (B, 1), 0, run)
    idx = (jnp.arange(X)[None, :] + offset) // run
    return jnp.take_along_axis(run_tokens, idx, axis=1).astype(jnp.int32)


@pytest.fixture(scope="module")
def random_params():
    return tiny_params(CFG, 0)


@pytest.fixture(scope="module")
def pretrained():
    """A tiny base model pretrained with lm_loss on the runs corpus; returns (params, losses)."""
    params = tiny_params(CFG, 1)
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, rng):
        tokens = runs_batch(rng, 16, 32)
        (loss, _), grads = jax.value_and_grad(
            lambda p: losses.lm_loss(CFG, p, tokens), has_aux=True
        )(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = opt.init(params)
    history = []
    for i in range(150):
        params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(100 + i))
        history.append(float(loss))
    return params, history


# ---------------------------------------------------------------- (a) packed == separate passes


def literal_means(cfg, params, la_LxD, tokens_BxX, ins_BxM):
    """The paper's input, one batch row per (row, group): x_0..x_p, LA_1..LA_L, then the rest of
    the sequence (causally invisible to the LA rows, it only keeps shapes static). Returns the mean
    CE against the data and the mean KL(p_model || q), p_model from a plain causal pass."""
    tokens = np.asarray(tokens_BxX)
    ins = np.asarray(ins_BxM)
    B, X = tokens.shape
    L = la_LxD.shape[0]
    base_logits_BxXxV, _ = forward(cfg, params, tokens_BxX, jnp.broadcast_to(jnp.arange(X), (B, X)))
    emb_BxXxD = embed_tokens(cfg, params, tokens_BxX)
    rows, la_rows, base_idx, targets = [], [], [], []
    for b in range(B):
        for p in ins[b]:
            k = len(rows)
            rows.append(
                jnp.concatenate(
                    [emb_BxXxD[b, : p + 1], la_LxD.astype(emb_BxXxD.dtype), emb_BxXxD[b, p + 1 :]],
                    axis=0,
                )
            )
            for i in range(1, L + 1):
                if p + 1 + i < X:  # LA_i sits at index p + i and drafts x_{p+1+i}
                    la_rows.append((k, p + i))
                    base_idx.append((b, p + i))
                    targets.append(tokens[b, p + 1 + i])
    embeds = jnp.stack(rows)  # [n, T, D]: n = B * M paper inputs of T = X + L tokens
    n, T, _ = embeds.shape
    logits, _ = forward(
        cfg,
        params,
        jnp.zeros((n, T), jnp.int32),
        jnp.broadcast_to(jnp.arange(T), (n, T)),
        embeds_BxTxD=embeds,
    )
    la_rows, base_idx = np.array(la_rows), np.array(base_idx)
    q = logits[la_rows[:, 0], la_rows[:, 1]]  # [valid LA rows, V]
    p = jax.lax.stop_gradient(base_logits_BxXxV[base_idx[:, 0], base_idx[:, 1]])
    ce = jax.nn.logsumexp(q, -1) - q[np.arange(len(targets)), np.array(targets)]
    logp, logq = jax.nn.log_softmax(p, -1), jax.nn.log_softmax(q, -1)
    kl = (jnp.exp(logp) * (logp - logq)).sum(-1)
    return ce.mean(), kl.mean()


def test_packed_equals_separate_single_insertion_passes(pretrained):
    params, _ = pretrained  # context-dependent outputs: any leak through the mask shows
    B, X, L = 2, 16, 3
    tokens = jax.random.randint(jax.random.PRNGKey(2), (B, X), 0, CFG.vocab_size)
    # last groups have targets past the end (masked): p=13 keeps LA_1 only, p=12 LA_1 and LA_2
    ins = jnp.array([[0, 5, 13], [2, 7, 12]], jnp.int32)
    la = random_la(CFG, L, 3)

    @jax.jit
    def packed(la):  # la_loss reports both ce and kl whatever the kind
        def both(a):
            _, m = losses.la_loss(CFG, params, a, tokens, ins, "ce")
            return jnp.stack([m["ce"], m["kl"]]), m

        jac_2xLxD, m = jax.jacrev(both, has_aux=True)(la)
        return m["ce"], m["kl"], jac_2xLxD[0], jac_2xLxD[1], m["num_targets"]

    @jax.jit
    def separate(la):
        def both(a):
            ce_kl = jnp.stack(literal_means(CFG, params, a, tokens, ins))
            return ce_kl, ce_kl

        jac_2xLxD, (ce, kl) = jax.jacrev(both, has_aux=True)(la)
        return ce, kl, jac_2xLxD[0], jac_2xLxD[1]

    ce_p, kl_p, gce_p, gkl_p, n = packed(la)
    ce_s, kl_s, gce_s, gkl_s = separate(la)
    assert int(n) == 2 * 3 * L - 2 - 1
    np.testing.assert_allclose(ce_p, ce_s, rtol=1e-5)
    np.testing.assert_allclose(kl_p, kl_s, rtol=1e-5)
    np.testing.assert_allclose(gce_p, gce_s, atol=1e-6)
    np.testing.assert_allclose(gkl_p, gkl_s, atol=1e-6)
    assert float(jnp.abs(gce_p).max()) > 1e-3 and float(jnp.abs(gkl_p).max()) > 1e-4


def test_greedy_targets_count_only_after_the_models_own_choices(pretrained):
    """targets='greedy': group g's LA_i counts only where x_{p+1}..x_{p+i} are each the
    frozen model's argmax after the tokens before them (brute force from an unpacked forward).
    On the runs corpus the copying model's argmax misses at run boundaries, so some targets
    go and some stay; the loss is the mean over those that stay, as with 'all'."""
    params, _ = pretrained
    B, X, M, L = 4, 32, 8, 3
    tokens = runs_batch(jax.random.PRNGKey(7), B, X)
    ins = losses.sample_insertion_points(jax.random.PRNGKey(8), B, M, X, L)
    la = random_la(CFG, L, 9)
    logits, _ = forward(CFG, params, tokens, jnp.broadcast_to(jnp.arange(X), (B, X)))
    argmax, toks, ins_np = np.argmax(logits, -1), np.asarray(tokens), np.asarray(ins)
    want = np.zeros((B, M * L), bool)
    for b, g, i in np.ndindex(B, M, L):
        p = ins_np[b, g]
        exists = p + 2 + i < X
        own = all(toks[b, p + j] == argmax[b, p + j - 1] for j in range(1, i + 2) if p + j < X)
        want[b, g * L + i] = exists and own
    packed = jax.jit(losses.packed_logits, static_argnums=(0, 5, 6))
    q, p, _, valid_all = packed(CFG, params, la, tokens, ins, "none", "all")
    q_g, p_g, _, valid_greedy = packed(CFG, params, la, tokens, ins, "none", "greedy")
    np.testing.assert_array_equal(valid_greedy, want)
    assert 0 < want.sum() < np.asarray(valid_all).sum()
    np.testing.assert_array_equal(q_g, q)
    np.testing.assert_array_equal(p_g, p)
    _, m = losses.la_loss(CFG, params, la, tokens, ins, "kl", targets="greedy")
    assert int(m["num_targets"]) == want.sum()
    kl_BxR = np.asarray(
        jnp.sum(jax.nn.softmax(p) * (jax.nn.log_softmax(p) - jax.nn.log_softmax(q)), -1)
    )
    np.testing.assert_allclose(m["kl"], kl_BxR[want].mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown LA targets 'mine'"):
        losses.make_la_train_step(CFG, optax.adam(1e-2), "kl", targets="mine")


# ---------------------------------------------------------------- (b) the packed layout


def test_packed_layout_matches_brute_force():
    X, L = 7, 3
    ins = np.array([[0, 2, 4], [5, 1, 1], [-1, 3, 6]])  # unsorted, repeated, invalid: all legal
    B, M = ins.shape
    T = X + M * L
    lay = jax.jit(losses.packed_layout, static_argnums=(1, 2))(jnp.asarray(ins), X, L)
    mask = np.zeros((B, T, T), bool)
    pos = np.zeros((B, T), int)
    for b in range(B):
        for r in range(T):
            if r < X:
                pos[b, r] = r
                mask[b, r, : r + 1] = True  # causal; LA columns (>= X) never visible
                continue
            g, i = divmod(r - X, L)  # group g, LA_{i+1}
            p = ins[b, g]
            pos[b, r] = p + i + 1
            for c in range(T):
                if c < X:
                    mask[b, r, c] = c <= p
                else:
                    g2, i2 = divmod(c - X, L)
                    mask[b, r, c] = g2 == g and i2 <= i
    np.testing.assert_array_equal(np.asarray(lay.mask_BxTxT), mask)
    np.testing.assert_array_equal(np.asarray(lay.positions_BxT), pos)
    p_BxR = np.repeat(ins, L, axis=1)
    i_R = np.tile(np.arange(1, L + 1), M)
    valid = (p_BxR >= 0) & (p_BxR + 1 + i_R < X)
    np.testing.assert_array_equal(np.asarray(lay.valid_BxR), valid)
    np.testing.assert_array_equal(np.asarray(lay.target_idx_BxR)[valid], (p_BxR + 1 + i_R)[valid])
    np.testing.assert_array_equal(np.asarray(lay.base_row_BxR)[valid], (p_BxR + i_R)[valid])


def test_sample_insertion_points():
    B, M, X, L = 512, 3, 10, 2
    sample = jax.jit(losses.sample_insertion_points, static_argnums=(1, 2, 3, 4))
    ins = np.asarray(sample(jax.random.PRNGKey(0), B, M, X, L))
    assert ins.shape == (B, M) and ins.dtype == np.int32
    assert (np.diff(ins, axis=1) > 0).all()  # sorted, distinct
    assert ins.min() == 0 and ins.max() == X - 2 - L  # every target inside the sequence
    one = np.asarray(sample(jax.random.PRNGKey(1), 4000, 1, X, L))
    counts = np.bincount(one[:, 0], minlength=X - 1 - L)
    assert len(counts) == X - 1 - L and counts.min() > 0.7 * counts.mean()  # ~uniform


# ------------------------------------------------- (c, d) training beats [UNK], base stays frozen


def test_training_beats_unk_and_leaves_base_untouched(pretrained):
    params, history = pretrained
    assert np.mean(history[-10:]) < np.mean(history[:10]) - 1.0  # lm_loss pretraining works
    before = jax.tree.map(np.array, params)
    B, X, L, M, steps = 16, 32, 4, 4, 60
    held = runs_batch(jax.random.PRNGKey(999), 32, X)
    held_ins = losses.sample_insertion_points(jax.random.PRNGKey(998), 32, M, X, L)
    estimate = functools.partial(losses.acceptance_estimate, temperature=0.8, top_k=10)

    la_unk = init_lookahead(CFG, params, L)
    acc_unk = estimate(CFG, params, la_unk, held, held_ins)

    opt = losses.paper_optimizer(lr=3e-2, steps=steps, warmup=steps // 10)
    step = losses.make_la_train_step(CFG, opt, "ce", num_groups=M)
    state = losses.init_la_state(la_unk, opt)  # la_unk is donated to the first step
    train_losses = []
    for i in range(steps):
        batch = {"tokens": runs_batch(jax.random.PRNGKey(2000 + i), B, X)}
        state, metrics = step(state, params, batch, jax.random.PRNGKey(7))
        train_losses.append(float(metrics["loss"]))  # computed before the step's update
    assert int(state.step) == steps and np.isfinite(float(metrics["grad_norm"]))
    assert np.mean(train_losses[-10:]) < train_losses[0] - 0.5, train_losses

    acc = estimate(CFG, params, state.la, held, held_ins)
    for kind in ("greedy", "sampled"):
        assert acc[kind].shape == (L,)
        assert float(acc[kind].mean()) > float(acc_unk[kind].mean()) + 0.2, (kind, acc, acc_unk)
    greedy_only = losses.acceptance_estimate(CFG, params, state.la, held, held_ins, 0.0)
    np.testing.assert_allclose(greedy_only["sampled"], greedy_only["greedy"], atol=1e-6)
    np.testing.assert_allclose(greedy_only["greedy"], acc["greedy"])

    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), before, params)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.dtype == b.dtype, before, params)))


# ---------------------------------------------------------------- (e) the KL loss


def test_kl_loss_zero_with_zero_gradient_at_the_model_and_decreases(pretrained):
    """With LA_1's embedding equal to the embedding of x_{p+1}, LA_1 computes exactly the base
    model's row p+1, so KL = 0 and its gradient vanishes; from [UNK] training lowers the KL."""
    params, _ = pretrained
    B, X, c = 4, 16, 7
    ins = jnp.array([[1, 6, 11]] * B, jnp.int32)
    tokens = runs_batch(jax.random.PRNGKey(5), B, X).at[:, np.asarray(ins[0]) + 1].set(c)
    batch = {"tokens": tokens, "insertion_points": ins}
    opt = optax.adam(3e-2)
    step = losses.make_la_train_step(CFG, opt, "kl")

    la_star = params["embed"]["embedding"][c][None, :]
    _, m = step(losses.init_la_state(la_star, opt), params, batch, jax.random.PRNGKey(0))
    assert abs(float(m["loss"])) < 1e-5 and float(m["grad_norm"]) < 1e-4
    assert float(m["greedy_acceptance"][0]) == 1.0

    state = losses.init_la_state(init_lookahead(CFG, params, 1), opt)
    kls = []
    for _ in range(30):
        state, m = step(state, params, batch, jax.random.PRNGKey(0))
        assert float(m["loss"]) >= 0.0 and float(m["loss"]) == float(m["kl"])
        kls.append(float(m["loss"]))
    assert kls[0] > 0.5 and kls[-1] < 0.25 * kls[0], kls


# ---------------------------------------------------------------- lm_loss, optimizer


def test_lm_loss_ignores_padding(random_params):
    tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 12), 0, CFG.vocab_size)
    mask = jnp.arange(12)[None, :] < jnp.array([[12], [8]])
    other = jnp.where(mask, tokens, (tokens + 17) % CFG.vocab_size)
    loss_a, m_a = losses.lm_loss(CFG, random_params, tokens, mask)
    loss_b, _ = losses.lm_loss(CFG, random_params, other, mask)
    assert int(m_a["num_targets"]) == 11 + 7
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    assert 0.0 <= float(m_a["accuracy"]) <= 1.0


def test_paper_optimizer_warmup_starts_at_zero():
    opt = losses.paper_optimizer(lr=1e-2, steps=100, warmup=10)

    @jax.jit
    def two_updates(la, grads):
        state = opt.init(la)
        first, state = opt.update(grads, state, la)
        second, _ = opt.update(grads, state, la)
        return first, second

    first, second = two_updates(jnp.ones((2, 4)), jnp.full((2, 4), 0.5))
    assert float(jnp.abs(first).max()) == 0.0 and float(jnp.abs(second).max()) > 0.0


# ---------------------------------------------------------------- (f) bad input


def test_bad_input(random_params):
    with pytest.raises(ValueError, match="num_lookahead"):
        init_lookahead(CFG, random_params, 0)
    for tok in (CFG.vocab_size, -1):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            init_lookahead(CFG, random_params, 2, token_id=tok)
    with pytest.raises(ValueError, match="need X >= M \\+ L \\+ 1"):
        losses.sample_insertion_points(jax.random.PRNGKey(0), 2, 5, 8, 4)
    with pytest.raises(ValueError, match="L >= 1"):
        losses.sample_insertion_points(jax.random.PRNGKey(0), 2, 1, 8, 0)
    with pytest.raises(ValueError, match="L must be >= 1"):
        losses.packed_layout(jnp.zeros((1, 1), jnp.int32), 8, 0)
    la = jnp.zeros((2, CFG.d_model))
    tokens = jnp.zeros((1, 8), jnp.int32)
    ins = jnp.zeros((1, 1), jnp.int32)
    with pytest.raises(ValueError, match="unknown LA loss kind"):
        losses.la_loss(CFG, random_params, la, tokens, ins, "mse")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.la_loss(CFG, random_params, la, tokens, ins, "kl", 0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        losses.acceptance_estimate(CFG, random_params, la, tokens, ins, -1.0)
    with pytest.raises(ValueError, match="unknown LA loss kind"):
        losses.make_la_train_step(CFG, optax.adam(1e-2), "mse")
    with pytest.raises(ValueError, match="warmup"):
        losses.paper_optimizer(steps=10, warmup=10)


# ------------------------------------------------- (g) parity with transformers on inputs_embeds


def test_packed_logits_match_transformers_single_insertion(tmp_path):
    """Each group's LA rows in the packed pass compute what transformers' PyTorch
    LlamaForCausalLM computes on the paper's single-insertion input
    ``[embed(x_0..x_p), LA_1..LA_L]`` at positions ``0..p+L`` (fed as ``inputs_embeds``); the
    matching base rows are its logits on the plain token sequence."""
    import torch
    import transformers

    from pass_jax import hf

    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager"
    ).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights large enough that attention is far from uniform
        for _, w in model.named_parameters():
            noise = torch.randn(w.shape, generator=g)
            w.copy_(1.0 + 0.1 * noise if w.ndim == 1 else 0.2 * noise)
    model.save_pretrained(tmp_path)
    cfg, params = hf.load_hf(tmp_path)

    B, X, L = 2, 12, 3
    tokens_BxX = np.array(jax.random.randint(jax.random.PRNGKey(0), (B, X), 0, 128), np.int32)
    # p=8 leaves LA_3 without a target, p=9 LA_2 and LA_3: their logits are still compared
    ins_BxM = np.array([[0, 4, 8], [2, 6, 9]], np.int32)
    la_LxD = random_la(cfg, L, 1, 0.5)
    q_BxRxV, p_BxRxV, targets_BxR, valid_BxR = jax.jit(losses.packed_logits, static_argnums=0)(
        cfg, params, la_LxD, tokens_BxX, ins_BxM
    )
    q_BxRxV, p_BxRxV = np.asarray(q_BxRxV), np.asarray(p_BxRxV)
    valid_BxR = np.asarray(valid_BxR)
    assert valid_BxR.sum() == B * 3 * L - 3 and np.abs(q_BxRxV).max() > 0.5

    la_t_LxD = torch.from_numpy(np.array(la_LxD))
    embed = model.get_input_embeddings()
    with torch.no_grad():
        for b in range(B):
            seq_XxV = model(torch.from_numpy(tokens_BxX[b : b + 1]).long()).logits[0].numpy()
            for grp, p in enumerate(ins_BxM[b]):
                x_TxD = torch.cat(
                    [embed(torch.from_numpy(tokens_BxX[b, : p + 1]).long()), la_t_LxD]
                )  # T = p + 1 + L
                ref_TxV = model(inputs_embeds=x_TxD[None]).logits[0].numpy()
                rows = slice(grp * L, (grp + 1) * L)
                np.testing.assert_allclose(q_BxRxV[b, rows], ref_TxV[p + 1 :], atol=1e-4, rtol=0)
                for i in range(1, L + 1):  # LA_i drafts x_{p+1+i}: the model's row p+i
                    r = grp * L + i - 1
                    if valid_BxR[b, r]:
                        np.testing.assert_allclose(p_BxRxV[b, r], seq_XxV[p + i], atol=1e-4, rtol=0)
                        assert int(targets_BxR[b, r]) == tokens_BxX[b, p + 1 + i]
    # the LA rows depend on their group's context: equal LAs, different outputs
    assert np.abs(q_BxRxV[0, :L] - q_BxRxV[0, L : 2 * L]).max() > 0.1


def test_remat_gives_the_same_loss_and_gradient_with_less_memory(random_params):
    """Per-layer rematerialisation (scanned layers, as training runs them): the loss and the
    LA gradient equal the plain pass's, and the compiled gradient keeps less activation memory
    (XLA's own memory analysis) on a deeper model."""
    from pass_jax.model import unstack_layers

    tokens = runs_batch(jax.random.PRNGKey(3), 2, 32)
    ins = losses.sample_insertion_points(jax.random.PRNGKey(4), 2, 8, 32, 3)
    la = init_lookahead(CFG, random_params, 3) + 0.1

    def grad(params, remat, cfg=CFG, la=la):
        return jax.value_and_grad(
            lambda x: losses.la_loss(cfg, params, x, tokens, ins, "kl", remat=remat)[0]
        )

    ref_loss, ref_grad = grad(random_params, "none")(la)
    for remat, params in (
        ("layer", random_params),
        ("dots", random_params),
        ("layer", unstack_layers(random_params)),
    ):
        loss, g = grad(params, remat)(la)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        np.testing.assert_allclose(g, ref_grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="remat must be one of"):
        grad(random_params, "all")(la)

    deep = CFG.replace(n_layers=4, d_model=64, ffn_dim=256)
    params = tiny_params(deep, 0)
    la = init_lookahead(deep, params, 3)

    def temp_bytes(remat):
        fn = jax.jit(grad(params, remat, deep, la))
        return fn.lower(la).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("layer") < 0.8 * temp_bytes("none")


def test_la_step_flops_match_xla_cost_analysis():
    """The analytic model FLOPs of a look-ahead step (what MFU is computed from) agree with
    XLA's count for the compiled step; per-layer params, so no loop hides layers from it."""
    from pass_jax.model import unstack_layers

    cfg = CFG.replace(vocab_size=512, d_model=64, ffn_dim=256, max_position=256)
    params = jax.eval_shape(lambda: unstack_layers(init_params(cfg, jax.random.PRNGKey(0))))
    B, X, M, L = 2, 64, 4, 3
    opt = optax.adamw(1e-2)
    state = jax.eval_shape(lambda: losses.init_la_state(jnp.zeros((L, cfg.d_model)), opt))
    step = losses.make_la_train_step(cfg, opt, "kl", M)
    compiled = step.lower(
        state,
        params,
        {"tokens": jax.ShapeDtypeStruct((B, X), jnp.int32)},
        jax.ShapeDtypeStruct((2,), jnp.uint32),
    ).compile()
    xla = compiled.cost_analysis()["flops"]
    assert losses.la_step_flops(cfg, B, X, M, L) == pytest.approx(xla, rel=0.15)
    greedy = losses.make_la_train_step(cfg, opt, "kl", M, targets="greedy")
    args = (state, params, {"tokens": jax.ShapeDtypeStruct((B, X), jnp.int32)})
    compiled = greedy.lower(*args, jax.ShapeDtypeStruct((2,), jnp.uint32)).compile()
    xla_greedy = compiled.cost_analysis()["flops"]
    flops_greedy = losses.la_step_flops(cfg, B, X, M, L, "greedy")
    assert flops_greedy == pytest.approx(xla_greedy, rel=0.15)
    assert xla_greedy > xla  # the output head on every sequence row
