"""Typed program configs (pass_jax.program_config, train.config): nested sections from YAML and
overrides, unknown keys and wrong types named, flags mapped onto fields, the resume view without
the fields free to change on resume, model presets, the one loss-kind check. No training here.
"""

import argparse
import dataclasses
import os

import pytest

from pass_jax import losses, program_config
from pass_jax.config import ModelConfig, RopeScaling
from pass_jax.program_config import free_on_resume
from train import base, lookahead
from train.config import BaseTrainConfig, LookaheadTrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.yaml")
CONFIGS = sorted(
    os.path.join(REPO, "configs", f) for f in os.listdir(os.path.join(REPO, "configs"))
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    lr: float
    steps: int
    name: str | None = None
    every: int = free_on_resume(10)
    ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    data: str
    out: str = free_on_resume("o")
    inner: Inner
    rope: RopeScaling | None = None


def test_nested_sections_defaults_and_yaml_floats():
    conf = program_config.from_dict(
        Outer, {"data": "d", "inner": {"lr": "1e-3", "steps": 3, "ids": [1, 2]}}
    )
    assert conf == Outer(data="d", inner=Inner(lr=1e-3, steps=3, ids=(1, 2)))
    assert isinstance(conf.inner.lr, float)
    assert program_config.from_dict(Inner, {"lr": 2, "steps": 1}).lr == 2.0  # ints widen
    rope = {
        "factor": 8.0,
        "low_freq_factor": 1,
        "high_freq_factor": 4,
        "original_max_position": 8192,
    }
    assert program_config.from_dict(
        Outer, {"data": "d", "inner": {"lr": 1, "steps": 1}, "rope": rope}
    ).rope == RopeScaling(8.0, 1.0, 4.0, 8192)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"inner": {"stepz": 1}}, "unknown config key 'inner.stepz'; did you mean inner.steps?"),
        (
            {"inner": {"zzz": 1}},
            "unknown config key 'inner.zzz'; the keys here are inner.lr, "
            "inner.steps, inner.name, inner.every, inner.ids",
        ),
        (
            {"innr": {}, "inner": {"lr": 1, "steps": 1}},
            "unknown config key 'innr'; did you mean inner?",
        ),
        ({"inner": {"steps": "abc"}}, "config key 'inner.steps' must be int, got 'abc'"),
        ({"inner": {"steps": 2.0}}, "config key 'inner.steps' must be int, got 2.0"),
        ({"inner": {"lr": True}}, "config key 'inner.lr' must be float or int, got True"),
        ({"inner": {"name": 3}}, "config key 'inner.name' must be str or null, got 3"),
        ({"inner": {"ids": [1, "x"]}}, "config key 'inner.ids[1]' must be int, got 'x'"),
        ({"inner": 4}, "config key 'inner' must be a section of keys, got 4"),
        (
            {"rope": {"factor": 2.0}},
            "the config is missing rope.low_freq_factor, "
            "rope.high_freq_factor, rope.original_max_position",
        ),
        ({"inner": {"lr": 1}}, "the config is missing inner.steps"),
        ({}, "the config is missing inner"),
    ],
)
def test_unknown_keys_wrong_types_and_missing_keys_are_named(values, message):
    """Named with their section; the first problem is reported (the given keys in order, then
    what is missing)."""
    with pytest.raises(ValueError) as e:
        program_config.from_dict(Outer, {"data": "d", **values})
    assert str(e.value) == message


def test_overrides_and_flags_apply_over_the_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: d\ninner:\n  lr: 1.0e-2\n  steps: 5\nother_program: {x: 1}\n")
    flags = argparse.Namespace(steps=7, out=None, config=str(path))  # None: flag not given
    conf = program_config.load(
        Outer,
        str(path),
        overrides=["inner.name=n", "out=o2"],
        args=flags,
        sections=("data", "inner", "out"),
    )
    assert conf == Outer(data="d", out="o2", inner=Inner(lr=1e-2, steps=7, name="n"))
    with pytest.raises(ValueError, match="unknown config key 'other_program'"):
        program_config.load(Outer, str(path))
    with pytest.raises(ValueError, match="override 'inner' is not of the form key=value"):
        program_config.load(Outer, str(path), overrides=["inner"], sections=("data", "inner"))


def test_resume_view_leaves_out_fields_free_on_resume_and_differences_name_the_rest():
    conf = Outer(data="d", inner=Inner(lr=0.1, steps=3, ids=(1,)))
    assert program_config.resume_view(conf) == {
        "data": "d",
        "inner": {"lr": 0.1, "steps": 3, "name": None, "ids": [1]},
        "rope": None,
    }
    cadence_only = dataclasses.replace(
        conf, out="elsewhere", inner=dataclasses.replace(conf.inner, every=99)
    )
    assert program_config.resume_view(cadence_only) == program_config.resume_view(conf)
    other = dataclasses.replace(conf, inner=dataclasses.replace(conf.inner, steps=4))
    assert program_config.differences(
        program_config.resume_view(conf), program_config.resume_view(other)
    ) == ["inner.steps: 3 -> 4"]
    assert program_config.differences({"a": 1}, {"b": 1}) == ["a: 1 -> unset", "b: unset -> 1"]


def test_a_setting_a_saved_view_lacks_counts_as_its_default():
    """A checkpoint made before a setting existed: the setting's default stands in for it."""
    conf = Outer(data="d", inner=Inner(lr=0.1, steps=3, ids=(1,)))
    defaults = program_config.resume_defaults(conf)
    assert defaults == {"inner": {"name": None, "ids": []}, "rope": None}
    now = program_config.resume_view(conf)
    older = {"data": "d", "inner": {"lr": 0.1, "steps": 3, "ids": [1]}}  # no name, no rope
    assert program_config.differences(older, now, defaults=defaults) == []
    named = dataclasses.replace(conf, inner=dataclasses.replace(conf.inner, name="n"))
    assert program_config.differences(
        older, program_config.resume_view(named), defaults=defaults
    ) == ["inner.name: None -> 'n'"]
    no_ids = {"data": "d", "inner": {"lr": 0.1, "steps": 3}}  # ids' default () is not (1,)
    assert program_config.differences(no_ids, now, defaults=defaults) == ["inner.ids: [] -> [1]"]
    no_steps = {"data": "d", "inner": {"lr": 0.1, "ids": [1]}}  # no default: still unset
    assert program_config.differences(no_steps, now, defaults=defaults) == [
        "inner.steps: unset -> 3"
    ]


def test_the_programs_cadence_fields_are_free_on_resume():
    def free(cls):
        return {f.name for f in dataclasses.fields(cls) if f.metadata.get("free_on_resume")}

    base_conf = base.load_config(base._parse(["--config", TINY]))
    assert free(BaseTrainConfig) == {"out", "data_dir", "lookahead"}
    assert free(type(base_conf.train)) == {"eval_every", "save_every", "keep", "log_every"}
    assert free(type(base_conf.model)) == free(type(base_conf.tokenizer)) == set()
    assert free(LookaheadTrainConfig) == {"model", "out", "data_dir"}
    assert free(type(lookahead.load_config(_la_args()).lookahead)) == {
        "eval_every",
        "save_every",
        "keep",
        "log_every",
        "remat",
    }


def _la_args(*extra):
    return lookahead._parse(
        [
            "--model",
            "m",
            "--data",
            "stdlib",
            "-L",
            "3",
            "--out",
            "o",
            "--config",
            os.path.join(REPO, "configs", "demo.yaml"),
            *extra,
        ]
    )


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_file_loads(path):
    sections = set(program_config.load_yaml(path))
    if "train" in sections:
        conf = base.load_config(base._parse(["--config", path]))
        assert conf.train.steps > conf.train.warmup and conf.model_config(vocab_size=64)
    if "lookahead" in sections:
        conf = lookahead.load_config(
            lookahead._parse(
                ["--model", "m", "--data", "stdlib", "-L", "3", "--out", "o", "--config", path]
            )
        )
        assert 0 <= conf.lookahead.warmup < conf.lookahead.steps


def test_lookahead_flags_map_onto_fields():
    conf = lookahead.load_config(
        _la_args(
            "--steps",
            "50",
            "--lr",
            "0.5",
            "--loss",
            "kl",
            "-M",
            "3",
            "--remat",
            "layer",
            "--data-dir",
            "dd",
            "--no-special-tokens",
        )
    )
    assert (conf.model, conf.data, conf.num_lookahead, conf.out, conf.data_dir) == (
        "m",
        "stdlib",
        3,
        "o",
        "dd",
    )
    assert conf.add_special_tokens is False
    la = conf.lookahead
    assert (la.steps, la.lr, la.loss, la.groups, la.remat) == (50, 0.5, "kl", 3, "layer")
    assert la.warmup == 10  # demo.yaml: warmup_fraction 0.2 of the 50 steps
    assert lookahead.load_config(_la_args("--warmup", "7")).lookahead.warmup == 7
    assert lookahead.load_config(_la_args()).lookahead.batch_size == 8  # from the file


def test_base_out_flag_overrides_the_file_and_key_value_overrides():
    conf = base.load_config(base._parse(["--config", CONFIGS[0], "out=a", "--out", "b"]))
    assert conf.out == "b"
    assert base.load_config(base._parse(["--config", CONFIGS[0], "out=a"])).out == "a"


def test_model_presets():
    assert ModelConfig.llama_7b().num_params() == 6_738_149_376
    assert ModelConfig.llama2_70b().n_kv_heads == 8 and ModelConfig.llama2_70b().dtype == "bfloat16"
    assert ModelConfig.tiny(max_position=512) == ModelConfig(
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=128,
        max_position=512,
    )
    assert ModelConfig.llama_125m().d_model == 768


def test_loss_kind_is_checked_in_one_place():
    assert losses.check_loss_kind("kl") == "kl"
    with pytest.raises(ValueError, match=r"unknown LA loss kind 'mse'; expected one of \('ce', "):
        losses.check_loss_kind("mse")
    args = _la_args()
    args.loss = "mse"  # what a config file may say (the flag has choices)
    with pytest.raises(ValueError, match="unknown LA loss kind 'mse'"):
        lookahead.load_config(args)
