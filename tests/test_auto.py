"""``method="auto"``: the acceptance model, the choice (autoregressive when nothing pays), and
lossless decoding while the schedule changes between segments."""

import copy
import itertools
import time

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, fake_timing, random_la, tiny_params

import pass_jax.auto as auto
import pass_jax.iteration_cost as iteration_cost
from pass_jax.generation import generate
from pass_jax.layout import make_schedule

CFG = TINY
PROMPTS = [[3, 9, 27], [5, 1, 4, 1, 5, 9, 2, 6], [7] * 13]


@pytest.fixture(autouse=True)
def _fresh_statistics():
    """Each test starts without the statistics and call costs earlier calls left."""
    auto.forget()
    iteration_cost._COSTS.clear()
    yield
    auto.forget()
    iteration_cost._COSTS.clear()


def test_candidates():
    assert auto.candidates(2) == (
        "ar",
        "pass",
        "tree-1",
        "tree-1x1",
        "tree-2x1",
        "tree-2x2",
        "tree-3x2",
        "tree-4x1",
        "tree-8x1",
        "ctx-3",
        "ctx-6",
        "tree-1+ctx3",
        "tree-4+ctx2",
    )
    assert auto.candidates(6)[:8] == (
        "ar",
        "pass",
        "tree-1",
        "tree-1x1",
        "tree-1x1x1",
        "tree-1x1x1x1",
        "tree-1x1x1x1x1",
        "tree-1x1x1x1x1x1",
    )
    assert auto.explorer(auto.candidates(4), 4) == "tree-3x2x1x1"  # 21 drafts
    assert auto.explorer(auto.candidates(2), 2) == "tree-8x1"  # 16 drafts; 3x2 has 9
    assert auto.widths("pass", 3) == (1, 1, 1) and auto.widths("ar", 3) == ()


def test_acceptance_statistics_and_expected_tokens():
    """A segment of 10 verifications of a 2x2 tree: depth 1 accepted 6 times at rank 0 and twice
    at rank 1 (so rank 1 was tried 4 times), depth 2 once at rank 0 (tried 8 times)."""
    stats = auto.AcceptanceStats.empty(2, 3)
    stats.update(np.array([[6, 2, 0], [1, 0, 0]]), 10, (2, 2), decay=1.0)
    np.testing.assert_array_equal(stats.tried_JxW, [[10, 4, 0], [8, 7, 0]])
    c = stats.conditional()
    np.testing.assert_allclose(c[:, 0], [7 / 12, 2 / 10])
    a1 = 1 - (1 - c[0, 0]) * (1 - c[0, 1])
    a2 = 1 - (1 - c[1, 0]) * (1 - c[1, 1])
    assert stats.expected_tokens("tree-2x2", 2) == pytest.approx(1 + a1 + a1 * a2)
    assert stats.expected_tokens("tree-1x1", 2) == pytest.approx(1 + c[0, 0] + c[0, 0] * c[1, 0])
    assert stats.expected_tokens("pass", 2) == pytest.approx(2 + c[0, 0] + c[0, 0] * c[1, 0])
    assert stats.expected_tokens("ar", 2) == 1.0
    stats.update(np.zeros((2, 3)), 0, (1,), decay=0.5)  # decay halves the counts
    np.testing.assert_allclose(stats.tried_JxW, [[5, 2, 0], [4, 3.5, 0]])


def test_context_draft_statistics_and_expected_tokens():
    """Context drafts are tried after the draws at a depth: 10 calls of ``ctx-2`` accept 6 at
    depth 1 and 3 at depth 2; then 10 calls of ``tree-2+ctx1`` (2 draws at depth 1, a context
    draft under the root and under each draw): depth 1 accepts 5 draws (rank 0: 4, rank 1: 1)
    and 2 context drafts, depth 2 accepts 1 context draft (of 7 nodes reached)."""
    assert auto.context_depths("ctx-2", 4) == range(1, 3) and auto.depth("ctx-2", 4) == 2
    assert auto.context_depths("tree-2+ctx1", 4) == range(1, 3)
    assert auto.widths("tree-2+ctx1", 4) == (2,) and auto.widths("ctx-2", 4) == ()
    stats = auto.AcceptanceStats.empty(3, 2)
    stats.update(np.zeros((3, 2)), 10, (), 1.0, np.array([6, 3, 0]), range(1, 3))
    np.testing.assert_array_equal(stats.ctx_tried_J, [10, 6, 0])
    np.testing.assert_array_equal(stats.ctx_accepted_J, [6, 3, 0])
    assert not stats.tried_JxW.any()
    cc = stats.context_conditional()
    assert stats.expected_tokens("ctx-2", 4) == pytest.approx(1 + cc[0] + cc[0] * cc[1])
    stats.update(
        np.array([[4, 1], [0, 0], [0, 0]]), 10, (2,), 1.0, np.array([2, 1, 0]), range(1, 3)
    )
    np.testing.assert_array_equal(stats.tried_JxW[0], [10, 6])
    np.testing.assert_array_equal(stats.ctx_tried_J, [10 + 5, 6 + 7, 0])
    np.testing.assert_array_equal(stats.ctx_accepted_J, [8, 4, 0])
    c, cc = stats.conditional(), stats.context_conditional()
    a1 = 1 - (1 - c[0, 0]) * (1 - c[0, 1]) * (1 - cc[0])
    want = 1 + a1 + a1 * cc[1]
    assert stats.expected_tokens("tree-2+ctx1", 4) == pytest.approx(want)


def test_choice_follows_costs_and_falls_back_to_autoregressive():
    stats = auto.AcceptanceStats.empty(2, 2)
    stats.update(np.array([[80, 10], [60, 5]]), 100, (2, 2), decay=1.0)
    cheap = {"ar": 1.0, "tree-1x1": 1.1, "tree-2x2": 1.2}  # a big call costs about one token
    assert auto.choose(stats, cheap, 2)[0] == "tree-2x2"
    assert auto.choose(stats, {**cheap, "tree-2x2": 1.9}, 2)[0] == "tree-1x1"
    costly = {"ar": 1.0, "tree-1x1": 3.0, "tree-2x2": 8.0}  # a CPU: calls cost their tokens
    best, expected = auto.choose(stats, costly, 2)
    assert best == "ar" and expected["tree-1x1"] < 3.0
    # a speculative layout must beat autoregressive decoding by MARGIN (5%): 1.5 expected
    # tokens (the Beta(1, 1) prior) at 1.45x the cost is 3% more, at 1.40x 7%
    fresh = auto.AcceptanceStats.empty(1, 1)
    assert auto.choose(fresh, {"ar": 1.0, "tree-1": 1.45}, 1)[0] == "ar"
    assert auto.choose(fresh, {"ar": 1.0, "tree-1": 1.40}, 1)[0] == "tree-1"
    # measured segments join the timed cost (weighted as TIMED_ITERATIONS), by iterations,
    # once the timed costs are scaled by the machine's pace (the measured seconds against
    # what the timed costs predict); the expected tokens still come from the statistics
    costs, T = {"ar": 1.0, "tree-1": 1.40}, auto.TIMED_ITERATIONS
    fresh.measure("tree-1", 16 * 1.6, 16)
    fresh.measure("tree-1", 8 * 1.9, 8)
    assert fresh.measured == {"tree-1": (pytest.approx(40.8), 24)}
    assert fresh.seconds_per_iteration("tree-1", 1.4) == pytest.approx((T * 1.4 + 40.8) / (T + 24))
    pace = fresh.pace(costs)
    assert pace == pytest.approx(40.8 / (24 * 1.4))
    assert fresh.seconds_per_iteration("tree-1", 1.4, pace) == pytest.approx(1.7)
    assert fresh.seconds_per_iteration("ar", 1.0, pace) == pytest.approx(pace)  # none measured
    # tree-1 ran 1.21x its timed cost and nothing else ran: the machine is judged slow, not
    # tree-1, which still promises 1.5 tokens at 1.4x the cost (7% more)
    assert auto.choose(fresh, costs, 1)[0] == "tree-1"
    fresh.measure("ar", 24 * 1.0, 24)  # autoregressive decoding ran at its timed cost
    assert fresh.pace(costs) == pytest.approx((40.8 + 24) / (24 * 1.4 + 24))
    assert auto.choose(fresh, costs, 1)[0] == "ar"  # so tree-1 was the slow one
    fresh.measure("ar", 48 * 1.5, 48)  # autoregressive segments' host round trips
    assert auto.choose(fresh, costs, 1)[0] == "tree-1"
    fresh.update(np.zeros((1, 1)), 30, (1,), decay=1.0)  # tree-1's drafts all rejected
    assert auto.choose(fresh, costs, 1)[0] == "ar"
    # ``among``: the best of some candidates, judged at the pace of all
    assert auto.choose(fresh, costs, 1, ["tree-1"])[0] == "tree-1"


def test_a_batch_counts_at_its_slowest_row():
    """Speculative segments of a batch whose rows made 8, 16 and 24 tokens: expected tokens
    count at the slowest row's share (8 / 16), so a layout that would pay for rows alike does
    not; one row, or equal rows, leave them as they are."""
    stats = auto.AcceptanceStats.empty(1, 1)
    stats.update(np.array([[90]]), 100, (1,), decay=1.0)  # 1.9 tokens per iteration
    costs = {"ar": 1.0, "tree-1": 1.5}
    assert stats.row_spread() == 1.0 and auto.choose(stats, costs, 1)[0] == "tree-1"
    stats.observe_rows(np.array([8, 16, 24]), decay=0.8)
    assert stats.row_spread() == pytest.approx(0.5)
    assert auto.choose(stats, costs, 1)[0] == "ar"
    for _ in range(20):  # later segments with rows alike outweigh it (decayed)
        stats.observe_rows(np.array([20, 20, 20]), decay=0.8)
    assert stats.row_spread() > 0.99 and auto.choose(stats, costs, 1)[0] == "tree-1"


def test_loop_iterations_of_a_segment():
    """From each row's forward calls in the segment: the most of any row, less the bootstrap
    calls after a switch, over the calls per iteration (the paper's schedule: 2)."""
    fused, paper = make_schedule("tree-1x1", 2), make_schedule("pass", 2)
    assert auto.loop_iterations(np.array([9, 7, 0]), fused, bootstrap=True) == 8
    assert auto.loop_iterations(np.array([9, 7, 0]), fused, bootstrap=False) == 9
    assert auto.loop_iterations(np.array([12, 4]), paper, bootstrap=True) == 6  # no bootstrap
    assert auto.loop_iterations(np.array([0, 0]), fused, bootstrap=True) == 0


def test_switching_schedules_every_segment_stays_lossless(monkeypatch):
    """Greedy auto with a policy that cycles through every kind of schedule (context drafts
    too) every 3 tokens
    (fake call costs: nothing is timed), batch of 3 with an EOS mid-row: autoregressive output.
    A second generation reuses the cost table."""
    params = tiny_params(CFG, 4)
    la = random_la(CFG, 2, 101, 0.05) + params["embed"]["embedding"][jnp.arange(2)]
    methods = ("ar", "pass", "tree-1x1", "tree-3x2", "tree-2", "ctx-3", "tree-2+ctx1")
    timed = []
    monkeypatch.setattr(iteration_cost, "time_iterations", fake_timing(lambda m, n: 1.0, timed))
    cycle = itertools.cycle(methods)
    monkeypatch.setattr(auto, "choose", lambda stats, costs, L, among=None: (next(cycle), {}))
    plain = generate(CFG, params, PROMPTS, max_new_tokens=30, eos_ids=()).tokens
    late = [
        (b, t)
        for b, row in enumerate(plain)
        for i, t in enumerate(row)
        if i >= 15 and t not in row[:i] and all(t not in r for r in plain[:b])
    ]
    row, eos = late[0]  # a token first emitted late in a row, absent from the rows before
    want = generate(CFG, params, PROMPTS, max_new_tokens=30, eos_ids=(eos,))
    res = auto.generate_auto(
        CFG,
        params,
        PROMPTS,
        max_new_tokens=30,
        la_LxD=la,
        eos_ids=(eos,),
        methods=methods,
        segment=3,
    )
    assert res.tokens == want.tokens and len(res.tokens[row]) < 30
    assert res.auto.segments[0] == "tree-3x2" and set(res.auto.segments) == set(methods)
    assert sorted(timed) == sorted(methods)
    assert sum(res.auto.tokens.values()) == sum(map(len, res.tokens)) - len(PROMPTS)  # + prefill
    assert res.stats()["auto"]["chosen_segments"] == res.auto.segments
    assert res.accepted_by_rank.shape == (3, 3, 3) and res.accepted.sum() > 0  # ctx-3: depth 3
    assert res.accepted_context.sum() > 0
    auto.generate_auto(CFG, params, PROMPTS, max_new_tokens=30, la_LxD=la, methods=methods)
    assert len(timed) == len(methods)  # the table is cached per model, batch and cache size


def test_the_cache_grows_when_a_bigger_layout_runs(monkeypatch):
    """The cache starts at the size the smallest candidate needs (128 slots for 90 tokens)
    and grows to 256 when ``tree-3x2`` (a 30-token call) first runs, once; the output stays
    autoregressive decoding's, and the segments after it measure at the new size. With a
    cache size asked for, nothing grows."""
    from pass_jax import compiled, decode

    params = tiny_params(CFG, 4)
    la = random_la(CFG, 2, 101, 0.05) + params["embed"]["embedding"][jnp.arange(2)]
    methods = ("ar", "ctx-3", "tree-3x2")
    monkeypatch.setattr(iteration_cost, "time_iterations", fake_timing(lambda m, n: 1.0))
    # the first segment's layout, the one exploring would run, then every later segment's
    # (a third ctx-3 segment: the first two are each its programs' first run, not measured)
    first = ["ctx-3", "ctx-3", "ctx-3", "ctx-3", "ar", "tree-3x2"]
    order = itertools.chain(first, itertools.cycle(methods))
    monkeypatch.setattr(auto, "choose", lambda stats, costs, L, among=None: (next(order), {}))
    compiled.forget()
    kw = dict(max_new_tokens=90, la_LxD=la, eos_ids=(), methods=methods, segment=8)
    kw.update(prior=[0.3, 0.2])  # (without one the widest candidate runs first)
    plain = generate(CFG, params, PROMPTS, max_new_tokens=90, eos_ids=()).tokens
    res = auto.generate_auto(CFG, params, PROMPTS, **kw)
    assert res.tokens == plain and res.auto.segments[:5] == first[:1] + first[2:]
    grown = [k[2] for k in compiled._EXECUTABLES if k[0] is decode.grow_cache]
    assert grown == [(("max_len", 256),)]  # one program: it grew once, to 256 slots
    (stats,) = auto._LEARNED.values()
    assert stats.measured is stats.measured_by_size[256] and stats.measured_by_size[128]
    assert stats.measured_by_size[256]
    compiled.forget()
    res = auto.generate_auto(CFG, params, PROMPTS, max_len=256, **kw)
    assert res.tokens == plain
    assert not [k for k in compiled._EXECUTABLES if k[0] is decode.grow_cache]


def test_prior_skips_the_costly_exploration(monkeypatch):
    """With the export's acceptance as a prior and CPU-like costs (calls cost their tokens),
    auto decodes autoregressively from the first segment (output still AR's) and explores only
    every 32 autoregressive segments, with the best speculative candidate, not the widest."""
    params = tiny_params(CFG, 4)
    la = params["embed"]["embedding"][jnp.arange(2)]
    methods = ("ar", "pass", "tree-1x1", "tree-3x2")
    costs = {"ar": 1.0, "pass": 2.5, "tree-1x1": 3.0, "tree-3x2": 12.0}
    monkeypatch.setattr(iteration_cost, "_COSTS", {})  # no cost table from another test
    monkeypatch.setattr(iteration_cost, "time_iterations", fake_timing(lambda m, n: costs[m]))
    stats = auto.prior_stats([0.2, 0.05], 2, 3)
    np.testing.assert_allclose(stats.conditional()[:, 0], [(3.2 + 1) / 18, (0.8 + 1) / 18])
    want = generate(CFG, params, PROMPTS, max_new_tokens=12, eos_ids=()).tokens
    res = auto.generate_auto(
        CFG,
        params,
        PROMPTS,
        max_new_tokens=12,
        la_LxD=la,
        eos_ids=(),
        methods=methods,
        segment=3,
        prior=[0.2, 0.05],
    )
    assert res.tokens == want and set(res.auto.segments) == {"ar"}
    # without the prior (nor the statistics the call above left) the widest tree runs first
    auto.forget()
    res = auto.generate_auto(
        CFG, params, PROMPTS, max_new_tokens=12, la_LxD=la, eos_ids=(), methods=methods, segment=3
    )
    assert res.tokens == want and res.auto.segments[0] == "tree-3x2"
    # after 32 autoregressive segments, one segment of the best speculative candidate
    auto.forget()
    res = auto.generate_auto(
        CFG,
        params,
        PROMPTS,
        max_new_tokens=40,
        la_LxD=la,
        eos_ids=(),
        methods=methods,
        segment=1,
        prior=[0.2, 0.05],
    )
    assert res.auto.segments[:33] == ["ar"] * 32 + ["pass"], res.auto.segments


def test_the_plain_loop_compiles_apart_from_its_wall_time(monkeypatch):
    """When autoregressive decoding is chosen throughout, the plain loop's program is compiled
    before it runs: the first call reports the seconds (left out of its wall time), a second
    compiles nothing, and the tokens are autoregressive decoding's."""
    params = tiny_params(CFG, 4)
    la = params["embed"]["embedding"][jnp.arange(2)]
    costs = {"ar": 1.0, "tree-1x1": 9.0}
    monkeypatch.setattr(iteration_cost, "time_iterations", fake_timing(lambda m, n: costs[m]))
    kw = dict(max_new_tokens=10, la_LxD=la, eos_ids=(), methods=tuple(costs), prior=[0.1, 0.1])
    first, second = (auto.generate_auto(CFG, params, PROMPTS, **kw) for _ in range(2))
    assert first.auto.segments == second.auto.segments == ["ar"]
    assert first.auto.compile_seconds > 0 and second.auto.compile_seconds == 0.0
    want = generate(CFG, params, PROMPTS, max_new_tokens=10, eos_ids=()).tokens
    assert first.tokens == second.tokens == want


def test_short_generations_explore_too(monkeypatch):
    """The autoregressive segments in a row are counted over calls (the plain loop as the
    segments it stands for): with a prior that chooses autoregressive decoding, 4-segment
    calls run the plain loop 8 times, and the 9th call's first segment explores the best
    speculative candidate; every output is autoregressive decoding's."""
    params = tiny_params(CFG, 4)
    la = params["embed"]["embedding"][jnp.arange(2)]
    methods = ("ar", "pass", "tree-1x1", "tree-3x2")
    costs = {"ar": 1.0, "pass": 2.5, "tree-1x1": 3.0, "tree-3x2": 12.0}
    monkeypatch.setattr(iteration_cost, "time_iterations", fake_timing(lambda m, n: costs[m]))
    want = generate(CFG, params, PROMPTS, max_new_tokens=12, eos_ids=()).tokens
    kw = dict(max_new_tokens=12, la_LxD=la, eos_ids=(), methods=methods, segment=3)
    chosen = []
    for _ in range(9):
        res = auto.generate_auto(CFG, params, PROMPTS, prior=[0.2, 0.05], **kw)
        assert res.tokens == want
        chosen.append(res.auto.segments)
    assert chosen[:8] == [["ar"]] * 8  # the plain loop: one logged segment a call
    assert chosen[8][0] == "pass", chosen[8]
    (learned,) = auto._LEARNED.values()
    prior = auto.prior_stats([0.2, 0.05], *learned.tried_JxW.shape)
    assert not np.allclose(learned.tried_JxW, prior.tried_JxW)  # the explored segment counted
    assert learned.ar_run < 4  # exploring started the count again
    # with no speculative candidate, nothing is ever explored: the plain loop every time
    kw["methods"] = ("ar",)
    for _ in range(12):
        res = auto.generate_auto(CFG, params, PROMPTS, prior=[0.2, 0.05], **kw)
        assert res.auto.segments == ["ar"] and res.tokens == want


def test_statistics_carry_over_to_the_next_call(monkeypatch):
    """A second call starts from the statistics the first one left (not from the widest
    candidate), chooses by them, and its output is still autoregressive decoding's."""
    params = tiny_params(CFG, 4)
    la = random_la(CFG, 2, 101, 0.05) + params["embed"]["embedding"][jnp.arange(2)]
    methods = ("ar", "tree-2", "ctx-3")
    costs = {"ar": 1.0, "tree-2": 1.3, "ctx-3": 1.2}
    monkeypatch.setattr(iteration_cost, "time_iterations", fake_timing(lambda m, n: costs[m]))
    kw = dict(max_new_tokens=24, la_LxD=la, eos_ids=(), methods=methods, segment=4)
    first = auto.generate_auto(CFG, params, PROMPTS, **kw)
    assert first.auto.segments[0] == "tree-2"  # no prior: the widest candidate first
    (learned,) = auto._LEARNED.values()
    assert learned.ctx_tried_J.sum() > 0 or "ctx-3" not in first.auto.segments
    assert learned.mean_row > 0 and 0 < learned.row_spread() <= 1  # a batch of 3 rows
    # seconds per loop iteration of the layouts that ran a segment (compiling left out)
    assert learned.measured and set(learned.measured) <= set(first.auto.segments)
    assert all(0 < s < 10 * n for s, n in learned.measured.values())
    want = auto.choose(learned, costs, 2)[0]
    assert want != "tree-2"  # (so the test tells learned statistics from a fresh start)
    second = auto.generate_auto(CFG, params, PROMPTS, **kw)
    assert second.auto.segments[0] == want
    plain = generate(CFG, params, PROMPTS, max_new_tokens=24, eos_ids=()).tokens
    assert first.tokens == second.tokens == plain
    auto.forget()
    assert auto.generate_auto(CFG, params, PROMPTS, **kw).auto.segments[0] == "tree-2"


def test_cache_sizes_share_statistics_and_costs(monkeypatch):
    """A call with a cache twice the first one's starts from the first call's acceptance
    statistics and borrows its timed costs (nothing timed again); the costs its segments
    measure are kept apart from the first size's; its output is autoregressive decoding's."""
    params = tiny_params(CFG, 4)
    la = random_la(CFG, 2, 101, 0.05) + params["embed"]["embedding"][jnp.arange(2)]
    methods = ("ar", "tree-2", "ctx-3")
    costs = {"ar": 1.0, "tree-2": 1.3, "ctx-3": 1.0}  # ctx-3 pays with any acceptance
    timed = []
    monkeypatch.setattr(
        iteration_cost, "time_iterations", fake_timing(lambda m, n: costs[m], timed)
    )
    kw = dict(max_new_tokens=24, la_LxD=la, eos_ids=(), methods=methods, segment=4)
    first = auto.generate_auto(CFG, params, PROMPTS, max_len=128, **kw)
    assert first.auto.segments[0] == "tree-2" and sorted(timed) == sorted(methods)
    (learned,) = auto._LEARNED.values()
    at_256 = copy.deepcopy(learned)
    at_256.at_size(256)  # the learned acceptance, 256's costs: the timed ones alone
    want = auto.choose(at_256, costs, 2)[0]
    assert want != "tree-2"  # (so the test tells learned statistics from a fresh start)
    at_128 = dict(learned.measured_by_size[128])
    assert at_128 and learned.measured is learned.measured_by_size[128]
    timed.clear()
    second = auto.generate_auto(CFG, params, PROMPTS, max_len=256, **kw)
    assert second.auto.segments[0] == want and len(auto._LEARNED) == 1
    assert timed == [] and second.auto.costs_from == "process@128"
    # the measured costs are kept per cache size: 256's segments left 128's as they were
    # (a second call at 256: the first runs each program for the first time, not measured)
    auto.generate_auto(CFG, params, PROMPTS, max_len=256, **kw)
    (shared,) = auto._LEARNED.values()
    assert shared.measured_by_size[128] == at_128 and shared.measured_by_size[256]
    plain = generate(CFG, params, PROMPTS, max_new_tokens=24, eos_ids=()).tokens
    assert first.tokens == second.tokens == plain


def test_compiling_is_reported_apart_from_the_wall_time(monkeypatch):
    """The prefill and segment programs compile apart from running: the first call reports
    the seconds, a second call of the same layout compiles nothing, and the output is still
    autoregressive decoding's."""
    params = tiny_params(CFG, 4)
    la = params["embed"]["embedding"][jnp.arange(2)]
    monkeypatch.setattr(iteration_cost, "time_iterations", fake_timing(lambda m, n: 1.0))
    kw = dict(max_new_tokens=10, la_LxD=la, eos_ids=(), methods=("tree-1x1",), segment=4)
    want = generate(CFG, params, PROMPTS, max_new_tokens=10, eos_ids=()).tokens
    t = time.perf_counter()
    first = auto.generate_auto(CFG, params, PROMPTS, **kw)
    outside = time.perf_counter() - t
    second = auto.generate_auto(CFG, params, PROMPTS, **kw)
    assert first.tokens == second.tokens == want
    assert set(first.auto.segments) == {"tree-1x1"} and first.auto.compile_seconds > 0
    assert first.wall_time <= outside - first.auto.compile_seconds  # left out of the wall
    assert second.auto.compile_seconds == 0.0 and second.wall_time > 0
    assert first.stats()["auto"]["compile_seconds"] == round(first.auto.compile_seconds, 3)


def test_a_programs_first_run_is_not_measured(monkeypatch):
    """A segment program's first run after compiling is a warm-up: its seconds do not join
    the layout's measured cost. With one layout, the first call compiles two programs (after
    a switch, with the bootstrap call, and without) and measures every segment but their
    first runs; a second call compiles nothing and measures every segment."""
    from pass_jax import compiled

    compiled.forget()
    auto.forget()
    params = tiny_params(CFG, 4)
    la = params["embed"]["embedding"][jnp.arange(2)]
    monkeypatch.setattr(iteration_cost, "time_iterations", fake_timing(lambda m, n: 1.0))
    measured = []
    measure = auto.AcceptanceStats.measure
    monkeypatch.setattr(
        auto.AcceptanceStats,
        "measure",
        lambda self, m, s, n: (measured.append(m), measure(self, m, s, n)),
    )
    kw = dict(max_new_tokens=16, la_LxD=la, eos_ids=(), methods=("tree-1x1",), segment=4)
    first = auto.generate_auto(CFG, params, PROMPTS, **kw)
    assert first.auto.compile_seconds > 0 and len(first.auto.segments) >= 3
    assert len(measured) == len(first.auto.segments) - 2
    measured.clear()
    second = auto.generate_auto(CFG, params, PROMPTS, **kw)
    assert second.auto.compile_seconds == 0.0
    assert len(measured) == len(second.auto.segments)
