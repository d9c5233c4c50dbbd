"""How often the benchmark's 95% speedup interval (`speedup_interval`) holds the true speedup,
by the number of repeats: simulated pairs of wall times with a true ratio of 1, a drift both
methods share (the machine slowing down or speeding up between repeats, 10%) and noise of
their own (4%, log-normal), 400 simulated runs per count.
python results/smollm2/auto-noise/coverage.py"""

import sys

import numpy as np

sys.path.insert(0, ".")
from infer import bench_summary  # noqa: E402

bench_summary.MIN_INTERVAL_REPEATS = 1  # (the benchmark gives none below 5; here every count)

rng = np.random.default_rng(1)
for n in (3, 4, 5, 7, 9, 15):
    held = 0
    for _ in range(400):
        drift_R = np.exp(rng.normal(0, 0.10, n))
        ar_R = 3.7 * drift_R * np.exp(rng.normal(0, 0.04, n))
        m_R = 3.7 * drift_R * np.exp(rng.normal(0, 0.04, n))
        low, high = bench_summary.speedup_interval(list(ar_R), list(m_R), resamples=1000) or (0, 0)
        held += low <= 1.0 <= high
    print(f"{n} repeats: the interval held the true ratio in {held / 4:.1f}% of 400 runs")
