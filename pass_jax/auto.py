"""``method="auto"``: decode with the layout that gives the most tokens per second here.

Candidates, for L look-ahead embeddings (``candidates``): autoregressive, the paper's two
calls, fused chains of every depth L' <= L (``tree-1x..x1``), a few draft trees, context drafts
alone (``ctx-3``, ``ctx-6``: prompt-lookup decoding) and two trees with context chains. Once per
model, batch size, cache size and device, one loop iteration of each is timed
(``iteration_cost.iteration_costs``; the table is kept in the process, and in a file when one is
given, as the programs do; a cache size within 2x of a timed one borrows its table). The
generation then runs in
segments of ``segment`` tokens per row, each with the candidate of the highest expected tokens
per iteration / seconds per iteration, switching schedules between segments (the cache and the
emitted tokens carry over; the new schedule's bootstrap call draws its drafts).

Acceptance statistics are kept while decoding, per depth j and rank r of the draws:
c(j, r) = P(the rank-r draw at depth j is accepted | depth j - 1 reached, ranks < r rejected),
and per depth for context drafts (tried after the draws): c_ctx(j); counts decayed every
segment, a Beta(1, 1) prior. A layout of widths w accepts at depth j with
a_j = 1 - prod_{r < w_j} (1 - c(j, r)) x (1 - c_ctx(j) where it has context drafts at depth j);
it is expected to accept sum_i prod_{j <= i} a_j drafts (depths taken as independent, and a
context chain under the root pooled with those under drafts: approximations), and an iteration
yields that + 1 (fused), + 2 (the paper's two calls) or 1 token (autoregressive, which wins when
nothing pays). Context drafts have no prior: their first estimate is the Beta(1, 1) mean, 1/2,
so a context layout is tried early when its calls are cheap, and kept only if the text repeats.

Without a prior, the first segment runs the candidate with the most draft nodes (of the default
candidates, the one that draws every depth and rank the others do), and after ``explore_every``
(8) autoregressive segments in a row one segment runs it again, so that statistics that improve
(a different kind of text) are seen. Exploring costs: on a CPU a wide tree's call costs several
autoregressive calls. With a ``prior`` (the held-out acceptance estimate a look-ahead export
records, which ``infer.generate`` and ``infer.bench`` pass), the statistics start from it, the
first segment is already the best expected layout, and the best speculative candidate runs
once every 32 autoregressive segments; when that is autoregressive and no exploration would
come before the end, the plain autoregressive loop runs (no segments, no host round trips).
The autoregressive segments in a row are counted over the calls of a process (per model,
sampler, candidates, embeddings and batch size, like the statistics), the plain loop as
the segments it stands for, so generations shorter than 32 segments explore too. Counted per
call, a prior that made autoregressive decoding the first choice kept it for good: on an H200,
30 calls of 128 tokens never tried ``ctx-3``, 1.32x autoregressive decoding there.

A layout's seconds per iteration start from its timed cost, which counts as the 40
iterations it was timed on (``TIMED_ITERATIONS``), and every segment adds its own iterations
and wall time (host round trips and a switch's bootstrap calls included, compiling not):
an iteration-weighted mean, so one slow segment (this VM's noise) moves it little. The timed
costs are first scaled by the machine's pace (``AcceptanceStats.pace``: the measured seconds
over what the timed costs predict for the same iterations, all layouts pooled), so a slow
spell, or timing that ran a little fast, weighs on every layout alike. Unscaled, it weighed
only on the layout that happened to run, while the others kept their timed costs: on this VM
``ctx-3``'s segments measured 1.3-1.5x its timed cost in slow spells, and ``auto`` left it for
``ctx-6`` or autoregressive decoding (``results/smollm2/auto-sim``). A segment program's first
run after compiling is not measured either: it ran 1.5x slower here (a warm-up, which the
benchmark leaves out of the fixed methods' times too). Expected tokens
always come from the shared statistics, so every layout is judged on the same text: a measured
*speed* would carry the text of the segment the layout last ran (measured in session 11:
``ctx-6`` kept by the speed of a repetitive segment while ``ctx-3``, 14% faster on the same
prompts, never ran again). In a batch, a layout's expected tokens count at the slowest row's
share of the mean row's tokens in the speculative segments so far (``row_spread``): the batch
runs until its slowest row is done, and rows whose text repeats draft far better than the
others (measured: ``ctx-3`` at batch 8 on code, 19 to 49 calls for the rows' 64 tokens, 0.64x
autoregressive decoding while the pooled acceptance promised more). A speculative layout is
chosen only when it beats autoregressive decoding by ``MARGIN`` (5%).

The statistics and measured costs carry over from call to call in a process (per model,
sampler, candidates, embeddings and batch size; ``forget`` drops them): a later call starts
from what the earlier ones saw, like a prior, so short generations do not each pay for
exploring. Calls of every cache size share the acceptance statistics (what a layout accepts
depends on the text, not on the cache size), while the measured costs are kept per cache size
(attention reads every slot).

Unless a cache size is asked for, the cache starts at the size the smallest candidate needs
(the costs are timed there) and grows when a layout whose calls need more slots runs
(``decode.grow_cache``, once per size). Sized for the widest tree from the start, every call
paid for slots it rarely used: on this VM 64 tokens of autoregressive decoding took 6% longer
with 256 slots than with 128, and ``ctx-3`` 1% (``results/smollm2/auto-sim``). It does not
shrink within a call: after a segment of a wide tree (the first one without a prior, or
exploring) the rest of the call runs with the bigger cache. The costs stay those timed at the
starting size; the machine's pace and the segments measured at the bigger size correct them.

The prefill and segment programs are compiled apart from running them (``compiled``), the
first time each runs in the process (per layout, bootstrap or not, batch, cache size and
generation length). The seconds that takes are reported (``AutoLog.compile_seconds``) and left
out of the generation's wall time, as a warm-up leaves out the fixed methods' compilation;
otherwise a layout first explored in a benchmark's timed run adds its compilation there. The
plain autoregressive loop is compiled apart too (``generate_fixed(..., compile_apart=True)``).

Which layout runs depends only on what already happened (tokens verified, times measured), so
every output stays exactly the model's distribution.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from . import compiled
from .cache import init_cache, resolve_cache_dtype
from .config import ModelConfig, SamplerConfig
from .decode import (
    DecodeSpec,
    GenerationResult,
    check_lengths,
    decode_precision,
    eos_array,
    generate_fixed,
    grow_cache,
    prefill_jit,
    prepare_batch,
    required_cache_len,
    resume_jit,
    round_cache_len,
    switch_schedule,
)
from .iteration_cost import REPEATS, STEPS, iteration_costs
from .layout import Schedule, make_schedule, parse_context, parse_tree, tree_name
from .model import is_stacked

# Cut to depth L. Wide and shallow (4x1, 8x1) because on SmolLM2-135M the top-k of LA_1 holds
# most of what the drafts get right (results/smollm2/trees): 8 candidates for the next token
# are accepted 61% of the time at greedy, its argmax 19%.
TREES = ((2, 1, 1, 1), (2, 2, 1, 1), (3, 2, 1, 1), (4, 1), (8, 1))
# Context drafts: cheap chains (a token each, no look-ahead group), and LA_1's draws with a
# lookup under each, which reads the draft it follows (results/smollm2/trees): its argmax with
# a chain of 3 (the fastest layout at greedy on an H200, results/smollm2/h200) and its top 4
# with a chain of 2 (the fastest there at T = 0.8).
CONTEXT = ("ctx-3", "ctx-6", "tree-1+ctx3", "tree-4+ctx2")
# The timed cost of a layout weighs as much as this many measured loop iterations: the
# iterations it was timed on (iteration_cost: 5 rounds of 8 steps).
TIMED_ITERATIONS = STEPS * REPEATS


def candidates(L: int) -> tuple[str, ...]:
    """The methods ``auto`` chooses from with L look-ahead embeddings."""
    if L < 1:
        return ("ar",)
    chains = [tree_name((1,) * k) for k in range(1, L + 1)]
    trees = sorted({w[:L] for w in TREES} - {(1,) * min(L, 4)}, key=lambda w: (len(w), w))
    return ("ar", "pass", *chains, *(tree_name(w) for w in trees), *CONTEXT)


def widths(method: str, L: int) -> tuple[int, ...]:
    """Draws per depth that ``method`` verifies (a chain: ones; autoregressive and context
    drafts alone: none)."""
    if method == "ar":
        return ()
    w = parse_tree(method)
    return (1,) * L if w is None else w


def context_depths(method: str, L: int) -> range:
    """Depths (1-based) at which ``method`` has context drafts: a chain of m under the root and
    under every draft reaches depth J + m (J: the draws' depth)."""
    m = parse_context(method)
    return range(1, len(widths(method, L)) + m + 1) if m else range(0)


def depth(method: str, L: int) -> int:
    """The deepest draft ``method`` verifies."""
    return max(len(widths(method, L)), len(context_depths(method, L)))


def base_tokens(method: str) -> int:
    """Tokens an iteration yields besides accepted drafts: 2 for the paper's two calls."""
    return 2 if method == "pass" else 1


def explorer(methods: Sequence[str], L: int) -> str:
    """The candidate with the most draft nodes (then the deepest): the first to run."""
    return max(methods, key=lambda m: (int(np.cumprod(widths(m, L)).sum()), len(widths(m, L))))


# --------------------------------------------------------------------------- acceptance


@dataclass
class AcceptanceStats:
    """Decayed counts per depth and rank: accepted ``[J, W]`` and tried ``[J, W]`` draws, and
    accepted ``[J]`` and tried ``[J]`` context drafts (J: the deepest candidate's depth)."""

    accepted_JxW: np.ndarray
    tried_JxW: np.ndarray
    ctx_accepted_J: np.ndarray
    ctx_tried_J: np.ndarray
    # wall seconds and loop iterations of each method's segments at the cache size in use
    # (``at_size``), kept per size: what an iteration accepts carries across cache sizes, what
    # it costs does not (attention reads every slot)
    measured: dict[str, tuple[float, int]] = field(default_factory=dict)
    measured_by_size: dict[int, dict[str, tuple[float, int]]] = field(default_factory=dict)
    # decayed sums over speculative segments of a batch: the slowest row's tokens and the
    # rows' mean tokens (``row_spread``)
    slowest_row: float = 0.0
    mean_row: float = 0.0
    # autoregressive segments in a row, counted over calls (the plain loop counts as the
    # segments it stands for), so that exploring comes in short generations too
    ar_run: int = 0

    @classmethod
    def empty(cls, J: int, W: int) -> AcceptanceStats:
        return cls(np.zeros((J, W)), np.zeros((J, W)), np.zeros(J), np.zeros(J))

    def at_size(self, size: int) -> None:
        """Measure and judge costs at cache size ``size`` from now on: ``measured`` becomes
        that size's segments."""
        self.measured = self.measured_by_size.setdefault(int(size), {})

    def measure(self, method: str, seconds: float, iterations: int) -> None:
        """Add a segment of ``iterations`` loop iterations that took ``seconds``."""
        s, n = self.measured.get(method, (0.0, 0))
        self.measured[method] = (s + float(seconds), n + int(iterations))

    def observe_rows(self, tokens_B: np.ndarray, decay: float) -> None:
        """Add a speculative segment's tokens per row (rows that decoded all of it)."""
        self.slowest_row = decay * self.slowest_row + float(np.min(tokens_B))
        self.mean_row = decay * self.mean_row + float(np.mean(tokens_B))

    def row_spread(self) -> float:
        """The slowest row's share of the mean row's tokens (1 before any batch was seen): a
        batch runs until its slowest row is done, so a layout's tokens per iteration count at
        this share (rows whose text repeats draft far better than the others)."""
        return self.slowest_row / self.mean_row if self.mean_row > 0 else 1.0

    def pace(self, costs: dict[str, float]) -> float:
        """How the measured segments compare with the timed ``costs`` (method -> seconds per
        iteration): their seconds over the seconds those costs predict for their iterations,
        every measured method pooled (1 before any segment was measured)."""
        seen = [m for m in self.measured if m in costs and self.measured[m][1]]
        predicted = sum(costs[m] * self.measured[m][1] for m in seen)
        return sum(self.measured[m][0] for m in seen) / predicted if predicted else 1.0

    def seconds_per_iteration(self, method: str, timed: float, pace: float = 1.0) -> float:
        """The method's cost: its ``timed`` seconds per iteration at the machine's ``pace``,
        weighted as ``TIMED_ITERATIONS`` iterations, averaged with its measured segments by
        iterations."""
        s, n = self.measured.get(method, (0.0, 0))
        return (TIMED_ITERATIONS * timed * pace + s) / (TIMED_ITERATIONS + n)

    def update(
        self,
        accepted_JxW: np.ndarray,
        verifications: int,
        w: tuple[int, ...],
        decay: float,
        ctx_accepted_J: np.ndarray | None = None,
        ctx_depths: range = range(0),
    ):
        """Add one segment of ``verifications`` calls of a layout of widths ``w`` with context
        drafts at ``ctx_depths``: ``accepted_JxW`` counts the accepted draws per depth and rank,
        ``ctx_accepted_J`` the accepted context drafts per depth (tried when the draws there
        were all rejected)."""
        for x in (self.accepted_JxW, self.tried_JxW, self.ctx_accepted_J, self.ctx_tried_J):
            x *= decay
        reach = float(verifications)
        for j in range(max(len(w), len(ctx_depths))):
            wj = w[j] if j < len(w) else 0
            acc = accepted_JxW[j, :wj].astype(float)
            self.accepted_JxW[j, :wj] += acc
            self.tried_JxW[j, :wj] += reach - np.concatenate([[0.0], np.cumsum(acc)[:-1]])
            ctx = 0.0
            if j + 1 in ctx_depths:
                ctx = float(ctx_accepted_J[j])
                self.ctx_accepted_J[j] += ctx
                self.ctx_tried_J[j] += reach - acc.sum()
            reach = acc.sum() + ctx

    def conditional(self) -> np.ndarray:
        """c(j, r) ``[J, W]`` (posterior mean under a Beta(1, 1) prior)."""
        return (self.accepted_JxW + 1.0) / (self.tried_JxW + 2.0)

    def context_conditional(self) -> np.ndarray:
        """c_ctx(j) ``[J]`` (posterior mean under a Beta(1, 1) prior)."""
        return (self.ctx_accepted_J + 1.0) / (self.ctx_tried_J + 2.0)

    def expected_tokens(self, method: str, L: int) -> float:
        """Expected tokens per loop iteration of ``method``."""
        c, cc = self.conditional(), self.context_conditional()
        w, ctx = widths(method, L), context_depths(method, L)
        total, reach = float(base_tokens(method)), 1.0
        for j in range(depth(method, L)):
            miss = np.prod(1.0 - c[j, : w[j] if j < len(w) else 0])
            reach *= 1.0 - miss * (1.0 - cc[j] if j + 1 in ctx else 1.0)
            total += reach
        return total


# --------------------------------------------------------------------------- generation


@dataclass
class AutoLog:
    """What ``auto`` chose: per method its segments, calls and tokens (all rows)."""

    seconds_per_iteration: dict[str, float]
    costs_from: str  # where those came from: timed, file, process (``iteration_costs``)
    segments: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    expected_tokens: dict[str, float] = field(default_factory=dict)
    judged: dict[str, float] = field(default_factory=dict)  # tokens/s per row (``speeds``)
    # seconds spent compiling the prefill, segment and cache-growing programs this call ran for
    # the first time in the process: not counted in the generation's wall time
    compile_seconds: float = 0.0
    # seconds spent getting the call costs (compiling and timing the candidates the first
    # time, reading them later): before the generation, not in its wall time
    timing_seconds: float = 0.0

    def stats(self) -> dict:
        return {
            "chosen_segments": self.segments,
            "compile_seconds": round(self.compile_seconds, 3),
            "timing_seconds": round(self.timing_seconds, 3),
            "calls_per_method": self.calls,
            "tokens_per_method": self.tokens,
            "ms_per_iteration": {
                m: round(1e3 * s, 4) for m, s in self.seconds_per_iteration.items()
            },
            "ms_per_iteration_from": self.costs_from,
            "expected_tokens_per_iteration": {
                m: round(t, 3) for m, t in self.expected_tokens.items()
            },
            "judged_tokens_per_s": {m: round(v, 3) for m, v in self.judged.items()},
        }


# per model, sampler, candidates, embeddings and batch size (not the cache size)
_LEARNED: dict[tuple, AcceptanceStats] = {}


def forget() -> None:
    """Drop the acceptance statistics ``generate_auto`` carries from call to call, and the
    programs compiled ahead of time (``compiled``)."""
    _LEARNED.clear()
    compiled.forget()


def prior_stats(
    prior_L: Sequence[float], J: int, W: int, strength: float = 16.0
) -> AcceptanceStats:
    """Statistics that start from a known acceptance of the draws per depth (e.g. the held-out
    estimate an export records): ``strength`` pseudo-tries at every depth and rank, accepted at
    that depth's rate (a missing depth, and context drafts: the Beta(1, 1) prior alone)."""
    stats = AcceptanceStats.empty(J, W)
    for j, a in enumerate(list(prior_L)[:J]):
        stats.accepted_JxW[j] = strength * float(a)
        stats.tried_JxW[j] = strength
    return stats


# A speculative layout must promise this much more than autoregressive decoding: the expected
# tokens take depths as independent and the costs come from greedy timing, so a layout that only
# breaks even by the estimate is as likely to be slower (measured: ctx-3 at T = 0.8 on code).
MARGIN = 0.05


def speeds(stats: AcceptanceStats, costs: dict[str, float], L: int) -> dict[str, float]:
    """Each method's speed as ``choose`` judges it, in tokens per second per row: its expected
    tokens per iteration, at the slowest row's share in a batch
    (``AcceptanceStats.row_spread``), over its seconds per iteration
    (``AcceptanceStats.seconds_per_iteration``: the timed ``costs`` at the machine's pace and
    what its segments measured); a method other than autoregressive decoding divided by
    1 + ``MARGIN``."""
    spread, pace = stats.row_spread(), stats.pace(costs)
    return {
        m: stats.expected_tokens(m, L)
        / stats.seconds_per_iteration(m, costs[m], pace)
        / (1.0 if m == "ar" else (1.0 + MARGIN) / spread)
        for m in costs
    }


def choose(
    stats: AcceptanceStats, costs: dict[str, float], L: int, among: Sequence[str] | None = None
) -> tuple[str, dict]:
    """The method of the highest speed (``speeds``: autoregressive decoding unless the best
    other one beats it by ``MARGIN``) of ``among`` (None or empty: all of ``costs``, every
    candidate's timed cost), and every method's expected tokens per iteration."""
    speed = speeds(stats, costs, L)
    return max(among or costs, key=speed.get), {m: stats.expected_tokens(m, L) for m in costs}


def _counters(state) -> list[np.ndarray]:
    """Host copies of the state's running counts (the state is donated to the next segment)."""
    return [
        np.array(x)
        for x in (
            state.accepted_BxJxW,
            state.accepted_ctx_BxJ,
            state.verify_calls_B,
            state.calls_B,
            state.n_B,
        )
    ]


def loop_iterations(calls_B: np.ndarray, schedule: Schedule, bootstrap: bool) -> int:
    """Loop iterations a segment ran, from the forward calls each row made in it (``[B]``,
    counted while the row was active): the most of any row, its bootstrap calls aside."""
    boot = len(schedule.bootstrap) if bootstrap else 0
    return int(np.max(np.maximum(calls_B - boot, 0)) // len(schedule.step)) if len(calls_B) else 0


@dataclass
class _Chooser:
    """Which method each segment runs: ``first``, then the best expected tokens per second,
    and ``explore`` after ``explore_every`` autoregressive segments in a row; ``observe``
    folds a segment's acceptance into the statistics."""

    stats: AcceptanceStats
    costs: dict[str, float]
    L: int
    first: str
    explore: str
    explore_every: int
    decay: float
    informed: bool  # the statistics started from a prior or from earlier calls

    @classmethod
    def make(
        cls,
        methods,
        costs,
        prior,
        L: int,
        W: int,
        explore_every,
        decay: float,
        learned: AcceptanceStats | None = None,
        size: int = 0,
    ):
        """From ``learned`` statistics (earlier calls') or a prior: start with the best
        expected method, explore the best speculative one every 32 segments; without either:
        start with (and explore) the widest candidate, every 8. Costs are judged at cache size
        ``size`` (``AcceptanceStats.at_size``)."""
        J = max(depth(m, L) for m in methods)
        if learned is not None:
            stats = copy.deepcopy(learned)
        else:
            stats = AcceptanceStats.empty(J, W) if prior is None else prior_stats(prior, J, W)
        stats.at_size(size)
        if learned is None and prior is None:
            first = explore = explorer(methods, L)
            return cls(stats, costs, L, first, explore, explore_every or 8, decay, False)
        first = choose(stats, costs, L)[0]
        explore = choose(stats, costs, L, [m for m in costs if m != "ar"])[0]
        return cls(stats, costs, L, first, explore, explore_every or 32, decay, True)

    def next(self, current: str | None) -> str:
        """The method of the next segment (``current``: the last one's, None at the start)."""
        exploring = self.stats.ar_run >= self.explore_every
        if exploring:
            method = self.explore
        elif current is None:
            method = self.first
        else:
            method = choose(self.stats, self.costs, self.L)[0]
        self.stats.ar_run = 0 if exploring or method != "ar" else self.stats.ar_run + 1
        return method

    def plain_ar(self, segments: int) -> bool:
        """Whether a generation of ``segments`` segments would run autoregressive decoding
        throughout, exploring nothing before its end (then the plain loop runs)."""
        return (
            self.first == "ar"
            and self.informed
            and (self.explore == "ar" or self.stats.ar_run + segments <= self.explore_every)
        )

    def observe(
        self, method: str, accepted_JxW: np.ndarray, accepted_ctx_J: np.ndarray, verify_calls: int
    ) -> None:
        """Fold a segment's accepted draws and context drafts into the statistics."""
        if method != "ar":  # nothing observed: the statistics (and a prior) stay as they are
            self.stats.update(
                accepted_JxW,
                verify_calls,
                widths(method, self.L),
                self.decay,
                accepted_ctx_J,
                context_depths(method, self.L),
            )

    def expected(self) -> dict[str, float]:
        """Every method's expected tokens per iteration now."""
        return choose(self.stats, self.costs, self.L)[1]

    def judged(self) -> dict[str, float]:
        """Every method's speed now, as the next choice would judge it (``speeds``)."""
        return speeds(self.stats, self.costs, self.L)


def _plain_ar(log: AutoLog, chooser: _Chooser, W: int, **generate_kw) -> GenerationResult:
    """The whole generation as the plain autoregressive loop (no segments, no host round
    trips), logged as one ``ar`` segment."""
    res = generate_fixed(method="ar", compile_apart=True, **generate_kw)
    rows = len(res.tokens)
    log.compile_seconds = res.compile_seconds
    log.segments.append("ar")
    log.calls["ar"] = int(sum(res.calls))
    log.tokens["ar"] = sum(map(len, res.tokens)) - rows  # the prefill's token aside
    log.expected_tokens, log.judged = chooser.expected(), chooser.judged()
    J = chooser.stats.ctx_tried_J.shape[0]
    return GenerationResult(
        tokens=res.tokens,
        calls=res.calls,
        accepted_by_rank=np.zeros((rows, J, W), np.int64),
        accepted_context=np.zeros((rows, J), np.int64),
        verify_calls=res.verify_calls,
        wall_time=res.wall_time,
        method="auto",
        auto=log,
    )


def generate_auto(
    cfg: ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    la_LxD,
    sampler: SamplerConfig = SamplerConfig(),
    eos_ids: Sequence[int] | None = None,
    seed: int = 0,
    max_len: int | None = None,
    methods: Sequence[str] | None = None,
    segment: int = 32,
    decay: float = 0.8,
    explore_every: int | None = None,
    prior: Sequence[float] | None = None,
    stream: Callable[[np.ndarray, np.ndarray], None] | None = None,
    precision: str = "auto",
    cache_dtype=None,
    cost_file: str | os.PathLike | None = None,
    retime: bool = False,
):
    """``generation.generate(..., method="auto")``: see the module docstring. ``methods``: the
    candidates (default ``candidates(L)``); ``segment``: tokens per row between choices;
    ``stream`` is called after every segment. ``prior``: a known acceptance per depth (the
    export's held-out estimate): the statistics start from it, the first segment is already
    chosen by expected tokens per second, and exploring runs the best speculative candidate
    every ``explore_every`` (default 32) autoregressive segments; without it the first segment
    runs the widest candidate and exploring comes every 8. ``precision``, ``cache_dtype``: as
    in ``generation.generate`` (the call costs are timed with that cache). ``max_len``: the
    cache's slots for the whole call (every candidate must fit); None: the smallest
    candidate's size, grown when a layout that needs more runs. ``cost_file``: keep
    the timed costs in this file too, and read them from it instead of timing again (the
    programs use ``iteration_cost.default_cost_file()``); ``retime``: time them again. Returns a
    ``GenerationResult`` whose ``auto`` holds the choices (``AutoLog``); its ``wall_time``
    starts at the prefill, as the fixed methods' does (the cost table, choosing the first
    layout and building the inputs come before it), and leaves out compiling the segment and
    cache-growing programs (``AutoLog.compile_seconds``)."""
    check_lengths(cfg, prompts, max_new_tokens)
    cache_dtype = resolve_cache_dtype(cfg, cache_dtype)
    if la_LxD is None:
        raise ValueError("method 'auto' needs look-ahead embeddings (la_LxD)")
    L = int(np.shape(la_LxD)[0])
    methods = tuple(methods or candidates(L))
    schedules = {m: make_schedule(m, L) for m in methods}
    prompt_BxP, prompt_len_B, active_B = prepare_batch(prompts, cfg.vocab_size)
    B, P = prompt_BxP.shape
    N = int(max_new_tokens)
    need = {m: required_cache_len(P, N, s) for m, s in schedules.items()}
    asked_len = max_len  # the plain loop sizes its own cache when none was asked for
    if max_len is None:  # each layout's own size; the cache grows when a bigger one runs
        size_of = {m: round_cache_len(n) for m, n in need.items()}
    elif max(need.values()) > max_len:
        raise ValueError(
            f"cache too small: auto needs {max(need.values())} slots, the cache has {max_len}"
        )
    else:
        size_of = dict.fromkeys(methods, max_len)
    max_len = min(size_of.values())
    prompt_lists = [list(p) for p in prompts]
    t = time.perf_counter()
    costs = iteration_costs(
        cfg,
        params,
        la_LxD,
        methods,
        prompt_lists,
        max_len,
        cache_dtype=cache_dtype,
        cost_file=cost_file,
        retime=retime,
    )
    log = AutoLog(*costs, timing_seconds=time.perf_counter() - t)
    W = max(s.width for s in schedules.values())
    key = (cfg, sampler, methods, W, np.asarray(la_LxD).tobytes(), B)
    chooser = _Chooser.make(
        methods,
        log.seconds_per_iteration,
        prior,
        L,
        W,
        explore_every,
        decay,
        _LEARNED.get(key),
        max_len,
    )
    segments = -(-(N - 1) // segment)  # (the prefill emits the first token)
    if chooser.plain_ar(segments):
        chooser.stats.ar_run += segments
        _LEARNED[key] = chooser.stats
        return _plain_ar(
            log,
            chooser,
            W,
            cfg=cfg,
            params=params,
            prompts=prompts,
            max_new_tokens=N,
            sampler=sampler,
            eos_ids=eos_ids,
            seed=seed,
            max_len=asked_len,
            stream=stream,
            precision=precision,
            cache_dtype=cache_dtype,
        )
    exact = decode_precision(cfg, sampler, precision)
    prefill_args = (
        params,
        *map(jnp.asarray, (prompt_BxP, prompt_len_B, active_B)),
        jnp.asarray(eos_array(cfg.eos_token_ids if eos_ids is None else eos_ids)),
        init_cache(cfg, B, max_len, cache_dtype, per_layer=not is_stacked(params)),
        jax.random.PRNGKey(seed),
    )
    spec = DecodeSpec(cfg, schedules[chooser.first], sampler, N, exact)
    prefill, log.compile_seconds = compiled.executable(prefill_jit, (spec,), {}, *prefill_args)
    t0, prefill_compile = time.perf_counter(), log.compile_seconds  # timed as generate_fixed is
    state = prefill(*prefill_args)
    J = chooser.stats.ctx_tried_J.shape[0]
    accepted_BxJxW, accepted_ctx_BxJ = np.zeros((B, J, W), np.int64), np.zeros((B, J), np.int64)
    current = None
    programs = {}  # (method, bootstrap, cache size) -> its segment program: found once a call
    decoding_B = ~np.asarray(state.done_B)  # rows still decoding: one host copy per segment
    while decoding_B.any():
        method = chooser.next(current)
        boot = method != current  # a switch: the new schedule's bootstrap calls first
        if boot:
            state = switch_schedule(state, schedules[method])
        if size_of[method] > max_len:  # its calls need more slots: the cache grows
            max_len = size_of[method]
            grow, seconds = compiled.executable(grow_cache, (), {"max_len": max_len}, state)
            log.compile_seconds += seconds
            state = grow(state)
            chooser.stats.at_size(max_len)
        args = (params, la_LxD, state, state.n_B + segment)  # ..., stop_B: segment more tokens
        first_run = False  # a program's first run after compiling: a warm-up, not measured
        if (method, boot, max_len) not in programs:
            spec = DecodeSpec(cfg, schedules[method], sampler, N, exact)
            programs[method, boot, max_len], seconds = compiled.executable(
                resume_jit, (spec,), {"bootstrap": boot}, *args
            )
            log.compile_seconds += seconds
            first_run = seconds > 0
        segment_program = programs[method, boot, max_len]
        t = time.perf_counter()
        before = _counters(state)  # (state is donated to the segment)
        state = segment_program(*args)
        acc, acc_ctx, vc, calls, n = [now - b for now, b in zip(_counters(state), before)]
        if n.sum() == 0:  # the cache is full
            break
        iterations = loop_iterations(calls, schedules[method], bootstrap=boot)
        if iterations and not first_run:
            chooser.stats.measure(method, time.perf_counter() - t, iterations)
        Jm, Wm = acc.shape[1:]
        accepted_BxJxW[:, :Jm, :Wm] += acc
        accepted_ctx_BxJ[:, :Jm] += acc_ctx
        chooser.observe(method, acc.sum(0), acc_ctx.sum(0), int(vc.sum()))
        still_B = ~np.asarray(state.done_B)
        whole = decoding_B & still_B  # rows that decoded the whole segment
        if method != "ar" and whole.sum() > 1:
            chooser.stats.observe_rows(n[whole], decay)
        decoding_B = still_B
        log.segments.append(method)
        log.calls[method] = log.calls.get(method, 0) + int(calls.sum())
        log.tokens[method] = log.tokens.get(method, 0) + int(n.sum())
        current = method
        if stream is not None:
            stream(np.asarray(state.out_BxN), np.asarray(state.n_B))
    wall = time.perf_counter() - t0 - (log.compile_seconds - prefill_compile)
    log.expected_tokens, log.judged = chooser.expected(), chooser.judged()
    _LEARNED[key] = chooser.stats
    rows = len(prompts)
    out, n = np.asarray(state.out_BxN), np.asarray(state.n_B)
    return GenerationResult(
        tokens=[out[i, : n[i]].tolist() for i in range(rows)],
        calls=np.asarray(state.calls_B)[:rows].tolist(),
        accepted_by_rank=accepted_BxJxW[:rows],
        accepted_context=accepted_ctx_BxJ[:rows],
        verify_calls=np.asarray(state.verify_calls_B)[:rows].tolist(),
        wall_time=wall,
        method="auto",
        auto=log,
    )
