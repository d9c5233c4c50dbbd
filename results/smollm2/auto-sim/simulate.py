"""Replay ``auto``'s choices between autoregressive decoding, ``ctx-3`` and ``ctx-6`` on exact
greedy traces (``traces.json``, from ``traces.py``), with the call costs the benchmark measured
and the timing noise of this VM, and compare choosing rules without timing anything.

At greedy the text does not depend on the layout, and a context draft is a function of the
text before it, so what every call accepts is known exactly from the traces: a simulated pass
of fixed ``ctx-3`` makes the benchmark's 202 calls. ``auto`` runs its real statistics and
chooser (``pass_jax.auto._Chooser``); only the clock is simulated. Each simulated process:
  - times the candidates once: the true cost per iteration x lognormal noise (``--timed-noise``,
    per layout), as ``iteration_cost`` does;
  - runs the benchmark's passes: a warm-up and ``--repeats`` timed passes over the prompts, one
    call per prompt, statistics carried from call to call; every segment's measured seconds
    carry lognormal noise too (``--segment-noise``);
  - scores each pass by its true seconds (noise-free), so only the choices differ.
Printed per rule: the median over processes of auto's median pass against the fastest fixed
layout, the worst 10% of processes, and how often it is more than 5% short.

python results/smollm2/auto-sim/simulate.py [--processes 200] [--kind code]"""

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, ".")
from pass_jax import auto  # noqa: E402

HERE = os.path.dirname(__file__)
# Seconds per loop iteration, from infer.bench at batch 1, greedy, on this VM
# (results/smollm2/auto-noise/code-greedy: ms per forward call of ar, ctx-3, ctx-6).
COST = {"ar": 0.024595, "ctx-3": 0.035561, "ctx-6": 0.042395}
PREFILL = 0.03  # seconds, the same for every method
N, SEGMENT, L = 64, 32, 4


def run_call(trace, method_of, measure, observe) -> float:
    """One generation of N tokens: ``method_of(current)`` picks each segment's layout,
    ``measure(method, iterations)`` and ``observe(method, accepted_ctx_J, calls)`` record it.
    Returns its true seconds."""
    acc = trace["accepted"]
    n, current, seconds = 1, None, PREFILL
    while n < N:
        method = method_of(current)
        m = {"ar": 0, "ctx-3": 3, "ctx-6": 6}[method]
        stop, calls, accepted_J = n + SEGMENT, 0, np.zeros(6)
        while n < stop and n < N:
            a = min(acc[n - 1], m)
            accepted_J[:a] += 1
            n, calls = n + a + 1, calls + 1
        measure(method, calls)
        observe(method, accepted_J, calls)
        seconds += calls * COST[method]
        current = method
    return seconds


def fixed_pass(traces, method) -> float:
    return sum(run_call(t, lambda _: method, lambda *a: None, lambda *a: None) for t in traces)


class Clock:
    """This VM's noise as ``segment_log.py`` measured it: a segment's seconds per iteration
    are the true cost x lognormal noise (``sd``), x ``FIRST_RUN`` on a program's first run
    after compiling (a segment program is per layout and bootstrap or not), and x ``BURST`` in
    slow spells that start at a segment with probability ``BURST_P`` and last 3-8 segments."""

    FIRST_RUN, BURST, BURST_P = 1.55, 1.35, 0.02

    def __init__(self, rng, sd):
        self.rng, self.sd, self.ran, self.burst = rng, sd, set(), 0

    def seconds(self, method, boot, calls) -> float:
        if self.burst == 0 and self.rng.random() < self.BURST_P:
            self.burst = int(self.rng.integers(3, 9))
        f = math.exp(self.rng.normal(0, self.sd))
        if self.burst:
            f, self.burst = f * self.BURST, self.burst - 1
        if (method, boot) not in self.ran:
            f *= self.FIRST_RUN
        return calls * COST[method] * f

    def first_run(self, method, boot) -> bool:
        """Whether this program has not run yet (and now has)."""
        new = (method, boot) not in self.ran
        self.ran.add((method, boot))
        return new


def simulate_process(traces, prior, rule, rng, repeats, timed_noise, segment_noise):
    """Median true seconds of auto's timed passes in one simulated process, and the share of
    segments per layout."""
    methods = ("ar", "ctx-3", "ctx-6")
    timed = {m: c * math.exp(rng.normal(0, timed_noise)) for m, c in COST.items()}
    clock = Clock(rng, segment_noise)
    learned, passes, used = None, [], {m: 0 for m in methods}
    for r in range(repeats + 1):  # a warm-up pass, then the timed ones
        total = 0.0
        for trace in traces:
            if learned is not None:
                rule.at_call(learned)
            ch = auto._Chooser.make(methods, timed, prior, L, 1, None, 0.8, learned, 128)
            segments = -(-(N - 1) // SEGMENT)
            if ch.plain_ar(segments):
                ch.stats.ar_run += segments
                total += PREFILL + (N - 1) * COST["ar"]
                used["ar"] += segments
                learned = ch.stats
                continue

            last = [None]

            def method_of(current, ch=ch, last=last):
                m = ch.next(current)
                used[m] += 1
                last[0] = m != current  # a switch: the bootstrap program
                return m

            def measure(m, calls, ch=ch, last=last):
                seconds = clock.seconds(m, last[0], calls)
                if not (clock.first_run(m, last[0]) and rule.skip_first_run):
                    ch.stats.measure(m, seconds, calls)

            def observe(m, accepted_J, calls, ch=ch):
                ch.observe(m, np.zeros((6, 1)), accepted_J, calls)

            total += run_call(trace, method_of, measure, observe)
            learned = ch.stats
        if r:
            passes.append(total)
    return float(np.median(passes)), used


class Rule:
    """``auto`` as committed: timed costs at the machine's pace, a program's first run not
    measured."""

    skip_first_run, pace, timed_iterations = True, True, auto.TIMED_ITERATIONS

    def at_call(self, stats):  # what a new call does to the carried statistics
        pass


class Session20(Rule):
    """``auto`` before session 21: timed costs as timed (3 repeats of 8 iterations, which
    weigh as 24 measured ones), every run measured."""

    skip_first_run, pace, timed_iterations = False, False, 24


class PaceOnly(Rule):
    """Timed costs at the machine's pace, every run measured."""

    skip_first_run = False


class SkipFirstRunOnly(Rule):
    """A program's first run not measured, timed costs as timed."""

    pace = False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--kind", default="code")
    ap.add_argument("--timed-noise", type=float, default=0.04)
    ap.add_argument("--segment-noise", type=float, default=0.04)
    ap.add_argument("--rules", default=",".join(RULES))
    args = ap.parse_args()
    with open(os.path.join(HERE, "traces.json")) as f:
        data = json.load(f)
    traces, prior = data[args.kind], data["prior"]
    fixed = {m: fixed_pass(traces, m) for m in COST}
    best = min(fixed, key=fixed.get)
    print(
        f"{args.kind}: fixed passes "
        + ", ".join(f"{m} {s:.3f} s ({fixed['ar'] / s:.3f}x)" for m, s in fixed.items())
    )
    for name in args.rules.split(","):
        rule = RULES[name]()
        if not rule.pace:
            auto.AcceptanceStats.pace = lambda self, costs: 1.0
        auto.TIMED_ITERATIONS = rule.timed_iterations
        rng = np.random.default_rng(0)
        ratios, shares = [], {m: 0 for m in COST}
        for _ in range(args.processes):
            med, used = simulate_process(
                traces, prior, rule, rng, args.repeats, args.timed_noise, args.segment_noise
            )
            ratios.append(fixed[best] / med)
            for m in used:
                shares[m] += used[m]
        auto.AcceptanceStats.pace, auto.TIMED_ITERATIONS = COMMITTED_PACE, COMMITTED_WEIGHT
        ratios = np.array(ratios)
        seg = sum(shares.values())
        print(
            f"  {name:28s} auto / {best}: median {np.median(ratios):.3f}, worst 10% "
            f"{np.quantile(ratios, 0.1):.3f}, >5% short in {np.mean(ratios < 1 / 1.05):.0%}; "
            f"vs ar {np.median(ratios) * fixed['ar'] / fixed[best]:.3f}x; segments "
            + ", ".join(f"{m} {v / seg:.0%}" for m, v in shares.items())
        )


COMMITTED_PACE, COMMITTED_WEIGHT = auto.AcceptanceStats.pace, auto.TIMED_ITERATIONS
RULES = {
    "session-20": Session20,
    "skip-first-run": SkipFirstRunOnly,
    "pace": PaceOnly,
    "committed": Rule,
}

if __name__ == "__main__":
    main()
