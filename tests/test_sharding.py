"""Sharding: meshes, partition rules, sharded forward / PaSS / LA train step == one device,
checkpoints restored onto other meshes, the memory plan, and two processes on localhost.

Runs on 8 simulated CPU devices (conftest sets XLA_FLAGS). Tolerance: float32 logits and LA
training results agree with the single-device run to rtol = atol = 1e-5 (sharding only changes
the order of float32 reductions); greedy token outputs are compared exactly.
"""

import json
import logging
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import free_port
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pass_jax import cli, memory_plan
from pass_jax import sharding as sh
from pass_jax.cache import cache_specs, init_cache
from pass_jax.checkpoint import abstract_like
from pass_jax.config import ModelConfig, SamplerConfig
from pass_jax.decode import (
    DecodeSpec,
    decode_state_sharding,
    eos_array,
    place_decode_inputs,
    prepare_batch,
    sharded_generate_jit,
)
from pass_jax.generation import generate
from pass_jax.hf import load_hf
from pass_jax.layout import make_schedule
from pass_jax.losses import init_la_state, make_la_train_step
from pass_jax.model import forward, init_params, init_params_sharded, unstack_layers

# Every sharded dim divisible on all test meshes: V=128, D=32, H*E=K*E=32, F=64, K=4.
CFG = ModelConfig(
    vocab_size=128,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=4,
    ffn_dim=64,
    max_position=128,
    unk_token_id=1,
)
MESHES = ["8,1,1", "2,1,4", "1,2,4", "1,8,1"]
PROMPTS = [[3, 9, 27], [5, 1, 4, 1, 5, 9, 2, 6], [7] * 13]
L = 3
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _la(params):
    return (
        0.05 * jax.random.normal(jax.random.PRNGKey(1), (L, CFG.d_model))
        + params["embed"]["embedding"][jnp.arange(L)]
    )


def _train_batch():
    B, N = 8, 16
    tokens = jax.random.randint(jax.random.PRNGKey(5), (B, N), 0, CFG.vocab_size, jnp.int32)
    ins = jnp.tile(jnp.array([[1, 6]], jnp.int32), (B, 1)) + jnp.arange(B)[:, None] % 3
    return {"tokens": np.asarray(tokens), "insertion_points": np.asarray(ins)}


OPT = optax.adamw(1e-2)


@pytest.fixture(scope="module")
def reference():
    """Single-device results: params, logits, greedy fused PaSS tokens, one LA step."""
    params = jax.jit(init_params, static_argnums=0)(CFG, jax.random.PRNGKey(0))
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (8, 12), 0, CFG.vocab_size))
    logits = np.asarray(_logits(params, tokens))
    la = np.asarray(_la(params))  # numpy: the train steps donate their (device) copies
    gen = generate(
        CFG, params, PROMPTS, max_new_tokens=12, method="pass-fused", la_LxD=la, eos_ids=()
    )
    step = make_la_train_step(CFG, OPT, num_groups=2)
    state, metrics = step(init_la_state(la, OPT), params, _train_batch(), jax.random.PRNGKey(0))
    return {
        "params": params,
        "tokens": tokens,
        "logits": logits,
        "la": la,
        "gen": gen,
        "la_after": np.asarray(state.la),
        "metrics": jax.tree.map(np.asarray, metrics),
    }


@jax.jit
def _logits(params, tokens_BxT):
    B, T = tokens_BxT.shape
    return forward(CFG, params, tokens_BxT, jnp.broadcast_to(jnp.arange(T), (B, T)))[0]


# ---------------------------------------------------------------- meshes and rules


def test_parse_and_make_mesh():
    assert sh.parse_mesh("data=2,fsdp=1,tensor=4") == {"data": 2, "fsdp": 1, "tensor": 4}
    assert sh.parse_mesh("tensor=2,data=-1", 8) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert sh.parse_mesh("2,1,4") == {"data": 2, "fsdp": 1, "tensor": 4}
    assert sh.parse_mesh({"fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert sh.parse_mesh(None, 4) == {"data": 1, "fsdp": 4, "tensor": 1}
    for bad in ("data=2,foo=4", "data=-1,fsdp=-1", "data=0", "data=x", "data"):
        with pytest.raises(ValueError):
            sh.parse_mesh(bad, 8)
    with pytest.raises(ValueError, match="not divisible"):
        sh.parse_mesh("data=3,fsdp=-1", 8)
    mesh = sh.make_mesh("data=2,fsdp=-1,tensor=2")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_names == sh.AXES
    with pytest.raises(ValueError, match="devices"):
        sh.make_mesh("data=2,fsdp=1,tensor=2")  # 4 of 8 devices: must be explicit
    assert dict(sh.make_mesh("1,1,4", devices=jax.devices()[:4]).shape)["tensor"] == 4
    import argparse

    ap = cli.add_mesh_arg(argparse.ArgumentParser())
    args = ap.parse_args(["--mesh", "data=2,fsdp=1,tensor=4"])
    assert dict(cli.mesh_from_args(args).shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    assert sh.maybe_initialize_distributed() is False  # nothing configured: no-op


def test_rules_and_fallback(caplog):
    abstract = jax.eval_shape(lambda: init_params(CFG, jax.random.PRNGKey(0)))
    specs = sh.param_specs(abstract, {"data": 1, "fsdp": 2, "tensor": 4})
    assert specs["embed"]["embedding"] == P("tensor", "fsdp")
    assert specs["lm_head"]["kernel"] == P("fsdp", "tensor")
    for name in ("q", "k", "v", "gate", "up"):
        assert specs["layers"][name]["kernel"] == P(None, "fsdp", "tensor")
    for name in ("o", "down"):
        assert specs["layers"][name]["kernel"] == P(None, "tensor", "fsdp")
    for name in ("attn_norm", "mlp_norm"):
        assert specs["layers"][name]["scale"] == P()
    assert specs["final_norm"]["scale"] == P()
    # gpt2 names and biases
    g = ModelConfig(
        vocab_size=128,
        d_model=32,
        n_layers=1,
        n_heads=4,
        n_kv_heads=4,
        ffn_dim=64,
        family="gpt2",
        model_type="gpt2",
        max_position=64,
    )
    gs = sh.param_specs(
        jax.eval_shape(lambda: init_params(g, jax.random.PRNGKey(0))),
        {"data": 1, "fsdp": 2, "tensor": 4},
    )
    assert gs["layers"]["fc"]["kernel"] == P(None, "fsdp", "tensor")
    assert gs["layers"]["fc"]["bias"] == P(None, "tensor")
    assert gs["layers"]["proj"]["kernel"] == P(None, "tensor", "fsdp")
    assert gs["pos_embed"]["embedding"] == P()
    # indivisible dims fall back (and say so): K*E = 2*8 = 16 is not split 32 ways
    odd = CFG.replace(n_kv_heads=2, vocab_size=100)
    with caplog.at_level(logging.DEBUG, logger="pass_jax.sharding"):
        os_ = sh.param_specs(
            jax.eval_shape(lambda: init_params(odd, jax.random.PRNGKey(0))),
            {"data": 1, "fsdp": 1, "tensor": 32},
        )
        cs = cache_specs(odd, {"data": 8, "fsdp": 1, "tensor": 4}, batch=4)
    assert os_["layers"]["k"]["kernel"] == P(None, "fsdp")  # fsdp (size 1) kept, tensor dropped
    assert os_["embed"]["embedding"] == P(None, "fsdp")  # 100 % 32 != 0: vocab not split
    assert cs.k == P()  # batch 4 % 8 and 2 kv heads % 4: replicated
    assert "not divisible" in caplog.text and "layers/k/kernel" in caplog.text
    # batch groups fall back to one axis
    assert sh.batch_spec((4, 16), {"data": 2, "fsdp": 4, "tensor": 1}) == P("data")
    assert sh.batch_spec((8, 16), {"data": 2, "fsdp": 4, "tensor": 1}) == P(("data", "fsdp"))


def _spec_axes(spec, ndim):
    return [sh._axes_tuple(a) for a in tuple(spec) + (None,) * (ndim - len(spec))]


def _assert_sharded_as(arr, spec, mesh):
    """Every addressable shard has the shape the spec implies: no device holds a full copy of
    a dim the rules split."""
    ms = dict(mesh.shape)
    want = tuple(
        s // math.prod(ms[a] for a in axes)
        for s, axes in zip(arr.shape, _spec_axes(spec, arr.ndim))
    )
    assert arr.sharding.is_equivalent_to(NamedSharding(mesh, spec), arr.ndim), (arr.sharding, spec)
    for shard in arr.addressable_shards:
        assert shard.data.shape == want, (shard.data.shape, want)


# ---------------------------------------------------------------- one device == any mesh


@pytest.mark.parametrize("mesh_spec", MESHES)
def test_sharded_equals_single_device(mesh_spec, reference):
    mesh = sh.make_mesh(mesh_spec)
    params = init_params_sharded(CFG, jax.random.PRNGKey(0), mesh)
    specs = sh.param_specs(params, mesh)
    for x, want, spec in zip(
        jax.tree.leaves(params),
        jax.tree.leaves(reference["params"]),
        jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P)),
    ):
        _assert_sharded_as(x, spec, mesh)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(want))
    ms = dict(mesh.shape)
    # the big weights really are split (none of these is replicated on this mesh)
    if ms["tensor"] > 1:
        assert params["layers"]["q"]["kernel"].addressable_shards[0].data.shape[2] == 32 // 4
    if ms["fsdp"] > 1:
        assert (
            params["layers"]["o"]["kernel"].addressable_shards[0].data.shape[2] == 32 // ms["fsdp"]
        )

    # logits (batch over data x fsdp)
    tokens = sh.shard_batch(reference["tokens"], mesh)
    assert tokens.addressable_shards[0].data.shape[0] == 8 // (ms["data"] * ms["fsdp"])
    np.testing.assert_allclose(np.asarray(_logits(params, tokens)), reference["logits"], **TOL)

    # greedy fused PaSS: same tokens; the cache stays split over rows and kv heads
    out, final = generate(
        CFG,
        params,
        PROMPTS,
        max_new_tokens=12,
        method="pass-fused",
        la_LxD=reference["la"],
        eos_ids=(),
        mesh=mesh,
        return_state=True,
    )
    assert out.tokens == reference["gen"].tokens
    B = final.cache.k.shape[1]
    _assert_sharded_as(final.cache.k, cache_specs(CFG, mesh, B).k, mesh)
    assert final.cache.k.addressable_shards[0].data.shape[1] == B // (ms["data"] * ms["fsdp"])

    # one LA train step: LA state replicated, batch split, base params sharded
    step = make_la_train_step(CFG, OPT, num_groups=2, mesh=mesh)
    state = sh.replicate(init_la_state(reference["la"], OPT), mesh)
    state, metrics = step(
        state, params, sh.shard_batch(_train_batch(), mesh), jax.random.PRNGKey(0)
    )
    assert state.la.sharding.is_fully_replicated
    np.testing.assert_allclose(np.asarray(state.la), reference["la_after"], **TOL)
    for k in ("loss", "grad_norm", "greedy_acceptance"):
        np.testing.assert_allclose(np.asarray(metrics[k]), reference["metrics"][k], **TOL)


def test_plain_library_functions_run_on_sharded_inputs(reference):
    """No wrapper needed: generation.generate and losses.make_la_train_step take sharded params and
    jit propagates the shardings (``mesh=`` adds the sharded cache and batch)."""
    mesh = sh.make_mesh("1,2,4")
    params = sh.shard_params(reference["params"], mesh)
    # greedy autoregressive (cheaper to compile) == the reference's greedy fused PaSS (lossless)
    gen = generate(CFG, params, PROMPTS, max_new_tokens=12, method="ar", eos_ids=())
    assert gen.tokens == reference["gen"].tokens
    step = make_la_train_step(CFG, OPT, num_groups=2)
    state, _ = step(
        init_la_state(reference["la"], OPT),
        params,
        sh.shard_batch(_train_batch(), mesh),
        jax.random.PRNGKey(0),
    )
    np.testing.assert_allclose(np.asarray(state.la), reference["la_after"], **TOL)


def test_sampled_pass_on_mesh_equals_single_device(reference):
    """Sampling (temperature, top-k; the paper's two-call schedule) draws the same tokens on a
    mesh: random bits do not depend on the sharding (threefry is partitionable)."""
    from pass_jax.config import SamplerConfig

    sampler = SamplerConfig(temperature=0.8, top_k=10)
    kw = {
        "max_new_tokens": 10,
        "method": "pass",
        "la_LxD": reference["la"],
        "sampler": sampler,
        "eos_ids": (),
        "seed": 3,
    }
    want = generate(CFG, reference["params"], PROMPTS[:2], **kw)
    mesh = sh.make_mesh("2,1,2", devices=jax.devices()[:4])  # 2 rows split 2 ways: no padding
    got = generate(CFG, sh.shard_params(reference["params"], mesh), PROMPTS[:2], mesh=mesh, **kw)
    assert got.tokens == want.tokens
    np.testing.assert_array_equal(got.accepted, want.accepted)


# ---------------------------------------------------------------- checkpoints across meshes


def test_checkpoint_restores_onto_other_meshes(tmp_path, reference):
    import orbax.checkpoint as ocp

    mesh8 = sh.make_mesh("2,1,4")
    params = sh.shard_params(reference["params"], mesh8)
    la_state = sh.replicate(init_la_state(reference["la"], OPT), mesh8)
    tree = {"params": params, "la_state": la_state}
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", tree)
        ckpt.wait_until_finished()
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        spec = "1,1,1" if len(devices) == 1 else "1,2,2"
        mesh = sh.make_mesh(spec, devices=devices)
        target = {
            "params": abstract_like(params, sh.param_shardings(params, mesh)),
            "la_state": abstract_like(la_state, sh.replicated(mesh)),
        }
        with ocp.StandardCheckpointer() as ckpt:
            restored = ckpt.restore(tmp_path / "ckpt", target)
        for got, want, tgt in zip(
            jax.tree.leaves(restored), jax.tree.leaves(tree), jax.tree.leaves(target)
        ):
            assert got.sharding == tgt.sharding
            assert set(got.sharding.device_set) == set(devices)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        if len(devices) == 4:
            q = restored["params"]["layers"]["q"]["kernel"]
            assert q.addressable_shards[0].data.shape == (2, 16, 16)


def test_project_checkpoint_restores_onto_other_mesh(tmp_path, reference):
    """The same through pass_jax.checkpoint (CheckpointManager, Composite items)."""
    checkpoint = pytest.importorskip("pass_jax.checkpoint")
    mesh8 = sh.make_mesh("1,8,1")
    state = {
        "params": sh.shard_params(reference["params"], mesh8),
        "la": sh.replicate(init_la_state(reference["la"], OPT), mesh8),
    }
    mngr = checkpoint.manager(str(tmp_path / "ckpts"), save_every=1)
    assert checkpoint.save(mngr, 3, state, data_state="{}", meta={"x": 1}, force=True)
    mngr.wait_until_finished()
    mngr.close()
    mesh4 = sh.make_mesh("2,1,2", devices=jax.devices()[4:])
    target = {
        "params": abstract_like(state["params"], sh.param_shardings(state["params"], mesh4)),
        "la": abstract_like(state["la"], sh.replicated(mesh4)),
    }
    mngr = checkpoint.manager(str(tmp_path / "ckpts"), save_every=1)
    restored = checkpoint.restore(mngr, target)
    mngr.close()
    assert restored.step == 3
    for got, want, tgt in zip(
        jax.tree.leaves(restored.state), jax.tree.leaves(state), jax.tree.leaves(target)
    ):
        assert got.sharding == tgt.sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_load_hf_onto_a_mesh(tmp_path, reference):
    from pass_jax.hf import save_hf

    cfg = CFG.replace(model_type="llama")
    save_hf(cfg, reference["params"], tmp_path / "m")
    mesh = sh.make_mesh("2,1,4")
    cfg2, params = load_hf(tmp_path / "m", mesh=mesh)
    _, plain = load_hf(tmp_path / "m")
    assert cfg2 == load_hf(tmp_path / "m")[0]
    specs = sh.param_specs(params, mesh)
    for x, y, spec in zip(
        jax.tree.leaves(params),
        jax.tree.leaves(plain),
        jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P)),
    ):
        _assert_sharded_as(x, spec, mesh)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # per-layer params (how the programs decode): each layer by the per-layer rules, and
    # greedy fused PaSS on the mesh with a per-layer sharded cache gives the reference tokens
    _, per_layer = load_hf(tmp_path / "m", stacked=False, mesh=mesh)
    assert per_layer["layers_1"]["q"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert per_layer["layers_0"]["o"]["kernel"].addressable_shards[0].data.shape[0] == 32 // 4
    out, final = generate(
        cfg,
        per_layer,
        PROMPTS,
        max_new_tokens=12,
        method="pass-fused",
        la_LxD=reference["la"],
        eos_ids=(),
        mesh=mesh,
        return_state=True,
    )
    assert out.tokens == reference["gen"].tokens
    B = final.cache.lengths.shape[0]
    for k in final.cache.k:
        _assert_sharded_as(k, cache_specs(CFG, mesh, B, per_layer=True).k[0], mesh)


# ---------------------------------------------------------------- memory plan


def test_memory_plan_figures():
    one = {"data": 1, "fsdp": 1, "tensor": 1}
    r = memory_plan.memory_plan(
        ModelConfig.llama_7b(),
        one,
        batch=1,
        max_len=2048,
        dtype="bfloat16",
        num_lookahead=4,
        device="h100",
    )
    assert ModelConfig.llama_7b().num_params() == 6_738_149_376
    norms = 2 * 32 * 4096 + 4096  # not in num_params()
    assert r["params_total"] == 2 * (6_738_149_376 + norms)  # ~13.5 GB
    assert abs(r["params_total"] / 1e9 - 13.48) < 0.01
    assert r["params_per_device"] == r["params_total"]
    assert r["kv_per_token"] == 2 * 32 * 4096 * 2 == 512 * 1024
    assert r["kv_per_device"] == 512 * 1024 * 2048  # 1 GiB for one 2048-token row
    assert r["la_state"] == 4 * 4 * 4096 * 4
    assert r["fits_serve"] and r["device_bytes"] == 80 * memory_plan.GiB
    # 70B (GQA: 8 kv heads): 320 KiB per token; 140 GB of bf16 weights fit no single device
    r70 = memory_plan.memory_plan(ModelConfig.llama2_70b(), one, 1, 2048, "bfloat16", 4, "h100")
    assert r70["kv_per_token"] == 2 * 80 * 8 * 128 * 2 == 320 * 1024
    assert not r70["fits"]
    # sharding divides what the rules split: 8-way tensor x 2-way fsdp
    r16 = memory_plan.memory_plan(
        ModelConfig.llama2_70b(), "data=1,fsdp=2,tensor=8", 16, 2048, "bfloat16", 4, "tpu-v4"
    )
    norms = 2 * (2 * 80 * 8192 + 8192)  # replicated
    assert r16["params_per_device"] == (r16["params_total"] - norms) // 16 + norms
    assert r16["kv_per_device"] == 320 * 1024 * 16 * 2048 // 16
    # a float32 memory plan doubles the weights
    r32 = memory_plan.memory_plan(ModelConfig.llama_7b(), one, 1, 2048, "float32", 4, "h100")
    assert r32["params_total"] == 2 * r["params_total"] and not r32["fits"]
    # remat shrinks the LA training activations; no-remat 70B training is activation-bound
    rr = memory_plan.memory_plan(
        ModelConfig.llama_7b(), one, 1, 2048, "bfloat16", 4, "h100", remat=True
    )
    # (one device: 32 layers' values -> their inputs and one layer's backward working set)
    assert rr["train_activations"] < r["train_activations"] / 9
    # the chosen meshes fit, and half as many devices would not
    for cfg in (ModelConfig.llama_7b(), ModelConfig.llama2_70b()):
        for dev in memory_plan.DEVICES:
            for need, kw in (("fits_serve", {}), ("fits_train", {"remat": True})):
                ms = memory_plan.choose_mesh(cfg, dev, batch=8, max_len=2048, need=need, **kw)
                assert memory_plan.memory_plan(cfg, ms, 8, 2048, "bfloat16", 4, dev, **kw)[need]
                n = math.prod(ms.values())
                if n > 1:
                    t = min(ms["tensor"], n // 2)
                    half = {"data": 1, "fsdp": n // 2 // t, "tensor": t}
                    assert not memory_plan.memory_plan(
                        cfg, half, 8, 2048, "bfloat16", 4, dev, **kw
                    )[need]
    assert (
        memory_plan.choose_mesh(
            ModelConfig.llama_7b(), "h100", batch=8, max_len=2048, need="fits_serve"
        )
        == one
    )  # 13.5 GB + 8 GiB of cache on one H100
    assert memory_plan.choose_mesh(
        ModelConfig.llama2_70b(), "tpu-v5e", batch=8, max_len=2048, need="fits_serve"
    ) == {"data": 1, "fsdp": 2, "tensor": 8}
    table = memory_plan.memory_plan_table()
    assert table.count("\n| LLaMA") == 6 and "512 KiB" in table and "320 KiB" in table
    doc = os.path.join(os.path.dirname(__file__), "..", "docs", "scaling.md")
    if os.path.exists(doc):  # the documented table is the function's output, not hand-made
        with open(doc) as f:
            assert table in f.read(), "docs/scaling.md is stale: python -m pass_jax.memory_plan"


# ---------------------------------------------------------------- two processes on localhost

_WORKER = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")
sys.path.insert(0, sys.argv[4])
import numpy as np
import test_sharding as t
from pass_jax import sharding as sh
from pass_jax.losses import init_la_state
coord, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
assert sh.maybe_initialize_distributed(coord, 2, pid)
assert jax.process_count() == 2 and jax.device_count() == 8
mesh = sh.make_mesh("data=2,fsdp=2,tensor=2")
params = t.init_params_sharded(t.CFG, jax.random.PRNGKey(0), mesh)
la = np.asarray(t._la(t.init_params(t.CFG, jax.random.PRNGKey(0))))  # local, same on both
batch = t._train_batch()
rows = 8 // jax.process_count()
local = {k: v[pid * rows:(pid + 1) * rows] for k, v in batch.items()}
step = t.make_la_train_step(t.CFG, t.OPT, num_groups=2, mesh=mesh)
state = sh.replicate(init_la_state(jax.numpy.asarray(la), t.OPT), mesh)
state, metrics = step(state, params, sh.shard_batch(local, mesh), jax.random.PRNGKey(0))
res = {"la": np.asarray(state.la.addressable_data(0)).tolist(),
       "loss": float(metrics["loss"].addressable_data(0)),
       "grad_norm": float(metrics["grad_norm"].addressable_data(0))}
json.dump(res, open(out, "w"))
jax.distributed.shutdown()
"""


def test_two_processes_one_la_step(tmp_path, reference):
    """Two processes x 4 CPU devices (gloo collectives), mesh (2, 2, 2) spanning both, each
    feeding its own 4 rows: one LA step equals the single-process result."""
    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        pytest.skip("this jaxlib has no CPU collectives option (gloo)")
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    coord = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), coord, str(i), str(tmp_path / f"out{i}.json"), here],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("two-process run timed out")
    for p, log_ in zip(procs, logs):
        assert p.returncode == 0, log_[-3000:]
    for i in range(2):
        res = json.loads((tmp_path / f"out{i}.json").read_text())
        np.testing.assert_allclose(np.asarray(res["la"]), reference["la_after"], **TOL)
        np.testing.assert_allclose(res["loss"], reference["metrics"]["loss"], **TOL)
        np.testing.assert_allclose(res["grad_norm"], reference["metrics"]["grad_norm"], **TOL)


def test_multi_host_flags_are_checked_and_a_missing_coordinator_times_out():
    """A process count without a coordinator used to run as one process; a missing process 0
    used to wait forever in silence. Now: clear errors, and a bounded wait with a message."""
    from pass_jax.sharding import maybe_initialize_distributed

    with pytest.raises(ValueError, match="--num-processes / --process-id need --coordinator"):
        maybe_initialize_distributed(None, 2, 0)
    with pytest.raises(ValueError, match="needs --num-processes and --process-id"):
        maybe_initialize_distributed("127.0.0.1:1", 2, None)
    with pytest.raises(ValueError, match=r"--process-id 2 is not in \[0, --num-processes 2\)"):
        maybe_initialize_distributed("127.0.0.1:1", 2, 2)
    assert not jax.distributed.is_initialized()
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "infer.generate",
            "--model",
            "unused",
            "--prompt",
            "x",
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            "1",
            "--init-timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    assert "multi-host: process 1 of 2 joining" in proc.stderr
    assert (
        f"error: multi-host: the coordinator 127.0.0.1:{port} did not answer within 2 s"
        in proc.stderr
    )


@pytest.mark.parametrize("per_layer", [False, True])
def test_decode_loop_keeps_the_cache_split_without_gathering_it(reference, per_layer):
    """The compiled sharded decode loop (fused PaSS, 8 simulated devices) carries the KV cache
    split over batch and kv heads as the rules say (pinned inside the while_loop by
    ``DecodeSpec.state_sharding``) and moves none of it between devices: no collective has the
    cache's slot dimension (256 here, a size no other array has)."""
    mesh = sh.make_mesh("data=2,fsdp=2,tensor=2")
    params = reference["params"]
    params = sh.shard_params(unstack_layers(params) if per_layer else params, mesh)
    B, S = 4, 256
    inputs = (
        reference["la"],
        *prepare_batch(PROMPTS[:1] * B, CFG.vocab_size, B),
        eos_array(()),
        jax.random.PRNGKey(0),
    )
    la, prompt, lens, active, eos, rng = place_decode_inputs(inputs, mesh)
    cache = init_cache(CFG, B, S, per_layer=per_layer, mesh=mesh)
    pinned = decode_state_sharding(mesh, B, CFG, per_layer)

    def compiled(state_sharding):
        spec = DecodeSpec(
            CFG, make_schedule("pass-fused", L), SamplerConfig(), 12, None, state_sharding
        )
        return (
            sharded_generate_jit(mesh, B, CFG, per_layer)
            .lower(spec, params, la, prompt, lens, active, eos, cache, rng)
            .compile()
            .as_text()
        )

    def cache_collectives(hlo):
        ops = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")
        return [
            line.strip()[:120]
            for line in hlo.splitlines()
            if any(f" {op}(" in line or f" {op}-start(" in line for op in ops)
            and f",{S}," in line.split("=", 1)[-1].split("(", 1)[0]
        ]

    hlo = compiled(pinned)
    local = f"f32[{'' if per_layer else f'{CFG.n_layers},'}1,2,{S},{CFG.hd}]"  # B/4, K/2
    loops = [line for line in hlo.splitlines() if " while(" in line and local in line]
    assert loops, "the decode loop does not carry the cache split over batch and kv heads"
    assert not cache_collectives(hlo), cache_collectives(hlo)
    if not per_layer:  # the check sees a cache that moves: pinned replicated, it is gathered
        rep = sh.replicated(mesh)
        assert cache_collectives(
            compiled(pinned.replace(cache=jax.tree.map(lambda _: rep, pinned.cache)))
        )
