"""``auto``'s call costs kept across processes: the file is read instead of timing again, kept
per setting, replaced (never trusted) when corrupt, and written atomically. The timing itself
is faked here (``time_iterations``), except in the last test."""

import json
import warnings

import pytest
from conftest import TINY, fake_timing, random_la, tiny_params

import infer.generate as generate_cli
import pass_jax.iteration_cost as ic

PROMPTS = [[3, 9, 27], [5, 1, 4, 1]]
METHODS = ("ar", "tree-1x1", "ctx-3")


@pytest.fixture
def timed(monkeypatch):
    """Fake timing (a method's cost: its name's length in ms per 128 cache slots, so that
    every cache size has its own figures); lists what was timed. The process's table starts
    empty, as in a new process."""
    calls = []
    monkeypatch.setattr(ic, "_COSTS", {})
    monkeypatch.setattr(ic, "time_iterations", fake_timing(lambda m, n: len(m) * n / 128e3, calls))
    return calls


def _costs(path, max_len=128, retime=False, methods=METHODS):
    return ic.iteration_costs(
        TINY,
        tiny_params(TINY, 0),
        random_la(TINY, 2, 0),
        methods,
        PROMPTS,
        max_len,
        cost_file=path,
        retime=retime,
    )


def test_costs_are_read_back_from_the_file_instead_of_timed(tmp_path, timed, monkeypatch):
    path = tmp_path / "sub" / "costs.json"
    costs, source = _costs(path)
    assert source == "timed" and sorted(timed) == sorted(METHODS)
    assert costs == {m: len(m) / 1000 for m in METHODS}  # at 128 slots
    (entry,) = json.loads(path.read_text())["entries"].values()
    assert entry["setting"]["max_len"] == 128 and entry["setting"]["batch"] == 2
    assert entry["seconds"] == costs

    timed.clear()
    assert _costs(path) == (costs, "process")  # this process's table
    monkeypatch.setattr(ic, "_COSTS", {})  # a new process: the file
    assert _costs(path) == (costs, "file") and timed == []
    # a method the file lacks is timed and added; the others still come from the file
    monkeypatch.setattr(ic, "_COSTS", {})
    more, source = _costs(path, methods=(*METHODS, "pass"))
    assert source == "file+timed" and timed == ["pass"]
    (entry,) = json.loads(path.read_text())["entries"].values()
    assert set(entry["seconds"]) == {*METHODS, "pass"}
    # a cache size more than twice another is another setting: timed, kept beside the first
    timed.clear()
    assert _costs(path, max_len=512)[1] == "timed" and sorted(timed) == sorted(METHODS)
    assert len(json.loads(path.read_text())["entries"]) == 2
    # --auto-retime: the file is not read (each method timed again, once per process)
    timed.clear()
    assert _costs(path, retime=True)[1] == "process" and timed == []
    monkeypatch.setattr(ic, "_COSTS", {})
    assert _costs(path, retime=True)[1] == "timed" and sorted(timed) == sorted(METHODS)
    timed.clear()
    assert _costs(path, retime=True)[1] == "process" and timed == []


def test_a_cache_size_without_a_table_borrows_the_nearest(tmp_path, timed, monkeypatch):
    """Within a factor of 2, another cache size's table stands in (this process's first, then
    the file's), the nearest one by ratio, and only when it has every method asked for; nothing is
    timed or written for the borrowing size. ``near=1`` times every size."""
    path = tmp_path / "costs.json"
    at_128, _ = _costs(path)
    timed.clear()
    assert _costs(path, max_len=256) == (at_128, "process@128") and timed == []
    assert len(json.loads(path.read_text())["entries"]) == 1  # nothing written for 256
    assert _costs(path, max_len=384)[1] == "timed"  # 3x 128: too far
    timed.clear()
    assert _costs(path, max_len=256)[1] == "process@384"  # 1.5x, nearer than 2x
    monkeypatch.setattr(ic, "_COSTS", {})  # a new process: the file's tables
    assert _costs(path, max_len=256)[1] == "file@384" and timed == []
    # a method the nearest table lacks: none stands in for all of them, so they are timed
    more, source = _costs(path, max_len=256, methods=(*METHODS, "pass"))
    assert source == "timed" and sorted(timed) == sorted((*METHODS, "pass"))
    timed.clear()
    costs, source = ic.iteration_costs(
        TINY, tiny_params(TINY, 0), random_la(TINY, 2, 0), METHODS, PROMPTS, 640,
        cost_file=path, near=1.0,
    )  # fmt: skip
    assert source == "timed" and sorted(timed) == sorted(METHODS)


def test_retiming_borrows_nothing(tmp_path, timed, monkeypatch):
    """``retime`` times a cache size even when another size's table is at hand, so that the
    file's entry for that size is replaced, not left for a later process to read."""
    path = tmp_path / "costs.json"
    _costs(path, max_len=256)
    monkeypatch.setattr(ic, "_COSTS", {})  # a new process, retiming 128 then 256
    timed.clear()
    assert _costs(path, retime=True)[1] == "timed"
    timed.clear()
    again, source = _costs(path, max_len=256, retime=True)
    assert source == "timed" and sorted(timed) == sorted(METHODS)
    monkeypatch.setattr(ic, "_COSTS", {})
    assert _costs(path, max_len=256) == (again, "file")


@pytest.mark.parametrize("size", [None, "256", 0, 256.0, True])
def test_a_file_entry_with_a_bad_cache_size_is_skipped(tmp_path, timed, monkeypatch, size):
    """An entry of the same setting whose ``max_len`` is missing or not a positive whole
    number stands in for no size (and crashes nothing)."""
    path = tmp_path / "costs.json"
    _costs(path, max_len=256)
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    if size is None:
        del entry["setting"]["max_len"]
    else:
        entry["setting"]["max_len"] = size
    data["entries"] = {ic._entry_id(entry["setting"]): entry}  # filed under its own id
    path.write_text(json.dumps(data))
    monkeypatch.setattr(ic, "_COSTS", {})
    timed.clear()
    assert _costs(path, max_len=256)[1] == "timed" and sorted(timed) == sorted(METHODS)


@pytest.mark.parametrize(
    "content", ["{not json", json.dumps({"format": "something else", "entries": {}}), "[1, 2]"]
)
def test_a_corrupt_or_foreign_file_is_reported_and_replaced(tmp_path, timed, content):
    path = tmp_path / "costs.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match="ignoring the iteration-cost file .*costs.json"):
        costs, source = _costs(path)
    assert source == "timed" and sorted(timed) == sorted(METHODS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the replaced file reads cleanly
        assert ic.read_table(path)


def test_a_stored_cost_that_is_not_a_positive_number_is_timed_again(tmp_path, timed, monkeypatch):
    path = tmp_path / "costs.json"
    _costs(path)
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    entry["seconds"]["ar"] = -1.0
    entry["seconds"]["ctx-3"] = "fast"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(ic, "_COSTS", {})
    timed.clear()
    assert _costs(path)[1] == "file+timed" and sorted(timed) == ["ar", "ctx-3"]


def test_an_interrupted_write_leaves_the_old_file(tmp_path, timed, monkeypatch):
    path = tmp_path / "costs.json"
    _costs(path)
    before = path.read_text()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(ic.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        _costs(path, max_len=512)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["costs.json"]  # no temporary file left


def test_default_file_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PASS_JAX_CACHE", str(tmp_path / "c"))
    assert ic.default_cost_file() == tmp_path / "c" / "iteration-costs.json"
    monkeypatch.delenv("PASS_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert ic.default_cost_file() == tmp_path / "x" / "pass_jax" / "iteration-costs.json"
    assert generate_cli.auto_cost_file(None) == ic.default_cost_file()
    assert generate_cli.auto_cost_file("none") is None
    assert generate_cli.auto_cost_file("my.json") == "my.json"


def test_time_iterations_compiles_every_method_then_times_it(monkeypatch):
    """For real on the tiny model: every method's ``run_steps`` program is compiled (all
    before any is timed, kept in ``compiled``), warmed up, then timed in rounds; each method
    gets its own positive cost; a cache too small for the timed steps is a clear error."""
    from pass_jax import compiled

    compiled.forget()
    params, la = tiny_params(TINY, 0), random_la(TINY, 2, 0)
    methods = ("ar", "tree-2x1", "ctx-3")
    ran, run = [], ic._run
    monkeypatch.setattr(ic, "_run", lambda program, *a: (ran.append(program), run(program, *a))[1])
    seconds = ic.time_iterations(TINY, params, la, dict.fromkeys(methods, 128), PROMPTS, 2)
    assert list(seconds) == list(methods) and all(s > 0 for s in seconds.values())
    programs = [compiled._EXECUTABLES[k] for k in compiled._EXECUTABLES if k[0] is ic.run_steps]
    assert len(programs) == 3  # one per method: its schedule is a static argument
    # a warm-up run of each, then rounds that run every method once (a slow spell of the
    # machine weighs on all of them)
    first = ran[:3]  # (compiled concurrently: kept in the order they finished)
    assert {id(p) for p in first} == {id(p) for p in programs} and ran == first * 3
    with pytest.raises(ValueError, match="max_len 16 is too small to time 8 tree-2x1 steps"):
        ic.time_iterations(TINY, params, la, {"tree-2x1": 16}, PROMPTS, 1)
    compiled.forget()
