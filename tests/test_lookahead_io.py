"""Look-ahead parameters: initialisation, export round trip, mismatch and corruption errors,
atomic writes."""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, random_la, tiny_params

from pass_jax import lookahead, sharding

CFG = TINY.replace(max_position=64, unk_token_id=3)


@pytest.fixture(scope="module")
def params():
    return tiny_params(CFG, 0)


@pytest.fixture
def export(tmp_path, params):
    """A trained-looking LA array exported to tmp_path/la; returns (dir, la)."""
    la = random_la(CFG, 4, 1)
    out = str(tmp_path / "la")
    lookahead.save_lookahead(
        out,
        la,
        CFG,
        lookahead.model_fingerprint(CFG, params),
        init_token_id=3,
        metrics={"greedy_acceptance": jnp.array([0.5, 0.375, 0.25, 0.125]), "steps": np.int64(10)},
    )
    return out, la


def test_init_rows_are_the_token_embedding_with_documented_fallback(params):
    table = np.asarray(params["embed"]["embedding"])
    la = lookahead.init_lookahead(CFG, params, 3)
    assert la.shape == (3, CFG.d_model) and la.dtype == table.dtype
    np.testing.assert_array_equal(np.asarray(la), np.tile(table[3], (3, 1)))
    np.testing.assert_array_equal(
        np.asarray(lookahead.init_lookahead(CFG, params, 1, 9))[0], table[9]
    )
    assert lookahead.init_lookahead(CFG, params, 2, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    base = CFG.replace(unk_token_id=None)
    assert lookahead.default_init_token(base) == 0
    assert lookahead.default_init_token(base.replace(bos_token_id=2)) == 2
    assert lookahead.default_init_token(base.replace(bos_token_id=2, pad_token_id=5)) == 5
    assert lookahead.default_init_token(CFG.replace(pad_token_id=5)) == 3


def test_fingerprint_is_stable_and_the_same_for_a_sharded_embedding():
    """The embedding hash of a fixed matrix is the one recorded by earlier versions (their
    exports stay valid), held in float32 or bfloat16, whole or split over a mesh (on several
    processes it is gathered first; the two-process test in test_train checks that)."""
    emb_VxD = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 97.0 - 10.0
    recorded = "a0d7fb99d060515e6eda28d04665d40285da624171d6ef872e9499f42a6ce9e4"
    for table in (emb_VxD, jnp.asarray(emb_VxD, jnp.bfloat16)):
        assert lookahead.model_fingerprint(TINY, {"embed": {"embedding": table}}) == {
            "model_type": "llama",
            "family": "llama",
            "n_layers": 2,
            "d_model": 32,
            "vocab_size": 64,
            "embedding_sha256": recorded,
        }
    mesh = sharding.make_mesh("data=1,fsdp=4,tensor=2")
    split = sharding.shard_params({"embed": {"embedding": emb_VxD}}, mesh)
    assert len(split["embed"]["embedding"].sharding.device_set) == 8
    assert not split["embed"]["embedding"].sharding.is_fully_replicated
    assert lookahead.model_fingerprint(TINY, split)["embedding_sha256"] == recorded


def test_parse_init_accepted_and_bad_forms():
    assert [lookahead.parse_init(s) for s in ("mean", "unk", "zeros")] == ["mean", "unk", "zeros"]
    assert lookahead.parse_init("token:5") == 5 and lookahead.parse_init("token:0") == 0
    assert isinstance(lookahead.parse_init("token:17"), int)
    for bad in (
        "",
        "Mean",
        "uniform",
        "token",
        "token:",
        "token:abc",
        "token:1.5",
        "tok:5",
        "5",
        "zero",
    ):
        with pytest.raises(
            ValueError,
            match=f"unknown look-ahead init {bad!r}; expected one of mean, unk, zeros, token:ID",
        ):
            lookahead.parse_init(bad)


def test_init_forms(params):
    table = np.asarray(params["embed"]["embedding"])
    D = CFG.d_model
    mean = lookahead.init_lookahead(CFG, params, 3, init="mean")
    assert mean.shape == (3, D) and mean.dtype == table.dtype
    np.testing.assert_allclose(
        np.asarray(mean), np.tile(table.mean(0), (3, 1)), rtol=1e-6, atol=1e-7
    )
    assert float(jnp.abs(mean - table[3]).max()) > 1e-3  # not the unk row by accident
    zeros = lookahead.init_lookahead(CFG, params, 2, init="zeros")
    assert zeros.shape == (2, D) and zeros.dtype == table.dtype
    assert not np.asarray(zeros).any()
    for spec in ("token:5", 5):
        np.testing.assert_array_equal(
            np.asarray(lookahead.init_lookahead(CFG, params, 2, init=spec)),
            np.tile(table[5], (2, 1)),
        )
    unk = lookahead.init_lookahead(CFG, params, 2, init="unk", unk_token_id=7)
    np.testing.assert_array_equal(np.asarray(unk), np.tile(table[7], (2, 1)))
    np.testing.assert_array_equal(
        np.asarray(lookahead.init_lookahead(CFG, params, 1, init="unk")), table[None, 3]
    )  # default: the config's unk token (3)
    # an explicit init wins over token_id, which only applies without one
    np.testing.assert_array_equal(
        np.asarray(lookahead.init_lookahead(CFG, params, 1, token_id=9, init="token:5")),
        table[None, 5],
    )
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lookahead.init_lookahead(CFG, params, 1, init=f"token:{CFG.vocab_size}")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lookahead.init_lookahead(CFG, params, 1, init="token:-1")
    with pytest.raises(ValueError, match="expected one of"):
        lookahead.init_lookahead(CFG, params, 1, init="uniform")


@pytest.mark.parametrize("init", ["mean", "unk", "zeros", "token:5"])
def test_init_dtype(params, init):
    params_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    table_bf16 = np.asarray(params_bf16["embed"]["embedding"], np.float32)
    assert lookahead.init_lookahead(CFG, params_bf16, 2, init=init).dtype == jnp.bfloat16
    la = lookahead.init_lookahead(CFG, params_bf16, 2, init=init, dtype=jnp.float32)
    assert la.dtype == jnp.float32
    assert (
        lookahead.init_lookahead(CFG, params, 2, init=init, dtype=jnp.bfloat16).dtype
        == jnp.bfloat16
    )
    expected_D = {
        "mean": table_bf16.mean(0),
        "unk": table_bf16[3],
        "zeros": np.zeros(CFG.d_model),
        "token:5": table_bf16[5],
    }[init]
    # float32 LAs of a bfloat16 model: the mean is taken in float32, not rounded to bfloat16
    np.testing.assert_allclose(np.asarray(la), np.tile(expected_D, (2, 1)), rtol=1e-6, atol=1e-7)


def test_round_trip(export, params):
    out, la = export
    assert sorted(os.listdir(out)) == ["lookahead.json", "lookahead.safetensors"]
    loaded = lookahead.load_lookahead(out, CFG, params, num_lookahead=4)
    assert loaded.dtype == la.dtype
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(la))
    with open(os.path.join(out, "lookahead.json")) as f:
        meta = json.load(f)
    assert meta == lookahead.lookahead_metadata(out)
    assert (meta["num_lookahead"], meta["d_model"], meta["vocab_size"]) == (4, 32, 64)
    assert meta["init_token_id"] == 3 and meta["metrics"] == {
        "greedy_acceptance": [0.5, 0.375, 0.25, 0.125],
        "steps": 10,
    }
    assert meta["model"] == lookahead.model_fingerprint(CFG, params)


def test_bfloat16_round_trip_and_fingerprint_independent_of_dtype(tmp_path, params):
    la = random_la(CFG, 2, 2).astype(jnp.bfloat16)
    params_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    fp = lookahead.model_fingerprint(CFG, params)
    assert lookahead.model_fingerprint(CFG, params_bf16) == fp
    lookahead.save_lookahead(str(tmp_path), la, CFG, fp)
    loaded = lookahead.load_lookahead(str(tmp_path), CFG)
    assert loaded.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(la))
    assert lookahead.load_lookahead(str(tmp_path), CFG, params_bf16).dtype == jnp.bfloat16
    assert lookahead.load_lookahead(str(tmp_path), CFG, params).dtype == jnp.float32


def test_mismatch_with_another_model_is_a_clear_error(tmp_path, export, params):
    out, _ = export
    wide = CFG.replace(d_model=64, ffn_dim=128)
    wide_dir = str(tmp_path / "wide")
    lookahead.save_lookahead(
        wide_dir,
        jnp.zeros((4, 64)),
        wide,
        {"model_type": "llama", "n_layers": 2, "d_model": 64, "vocab_size": 64},
    )
    with pytest.raises(
        ValueError,
        match=f"lookahead in {wide_dir} was trained for a model with "
        "d_model=64, this model has d_model=32",
    ):
        lookahead.load_lookahead(wide_dir, CFG)
    with pytest.raises(ValueError, match="vocab_size=64, this model has vocab_size=128"):
        lookahead.load_lookahead(out, CFG.replace(vocab_size=128))
    with pytest.raises(ValueError, match="n_layers=2, this model has n_layers=3"):
        lookahead.load_lookahead(out, CFG.replace(n_layers=3))
    other = tiny_params(CFG, 5)  # same architecture, other weights
    with pytest.raises(ValueError, match="different token embedding"):
        lookahead.load_lookahead(out, CFG, other)
    with pytest.raises(ValueError, match="num_lookahead=4, 6 were asked for"):
        lookahead.load_lookahead(out, CFG, num_lookahead=6)
    with pytest.raises(ValueError, match="d_model=16, the model has d_model=32"):
        lookahead.save_lookahead(str(tmp_path / "bad"), jnp.zeros((2, 16)), CFG, {})


def test_missing_or_corrupt_files_are_clear_errors(tmp_path, export):
    out, _ = export
    with pytest.raises(FileNotFoundError, match="no look-ahead export"):
        lookahead.load_lookahead(str(tmp_path / "nowhere"), CFG)
    path = os.path.join(out, "lookahead.safetensors")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # truncated tensor data
    with pytest.raises(ValueError, match="corrupt"):
        lookahead.load_lookahead(out, CFG)
    Path(path).write_bytes(b"\x07garbage, not a safetensors file")
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        lookahead.load_lookahead(out, CFG)
    from safetensors.numpy import save_file

    save_file({"lookahead": np.zeros((4, 32), np.float32)}, path)  # no pass_jax metadata
    with pytest.raises(ValueError, match="not written by save_lookahead"):
        lookahead.load_lookahead(out, CFG)


def test_interrupted_save_keeps_the_previous_export(export, params, monkeypatch):
    out, la = export
    marker = os.path.join(out, "checkpoint.txt")
    Path(marker).write_text("other files in the directory survive saves")

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a fi")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(lookahead, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        lookahead.save_lookahead(
            out, jnp.zeros_like(la), CFG, lookahead.model_fingerprint(CFG, params)
        )
    monkeypatch.undo()
    np.testing.assert_array_equal(
        np.asarray(lookahead.load_lookahead(out, CFG, params)), np.asarray(la)
    )
    assert sorted(os.listdir(out)) == ["checkpoint.txt", "lookahead.json", "lookahead.safetensors"]
    lookahead.save_lookahead(out, jnp.zeros_like(la), CFG, lookahead.model_fingerprint(CFG, params))
    assert float(jnp.abs(lookahead.load_lookahead(out, CFG, params)).max()) == 0.0
    assert os.path.exists(marker)
