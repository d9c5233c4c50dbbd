"""Where the step in a call's cost from one token to two comes from: SmolLM2-135M's weight
matmuls alone, for T = 1, 2, 4, 8 tokens, jitted, on this machine's default backend.

    python results/smollm2/call-cost/matmuls.py > results/smollm2/call-cost/matmuls.txt

Each shape is a ``[T, d_in] @ [d_in, d_out]`` float32 product with random operands: the output
head (576 x 49152, the tied embedding) and the per-layer projections (q and o 576 x 576, k and v
576 x 192, gate and up 576 x 1536, down 1536 x 576; 30 layers). Median of 50 calls after a
warm-up, with ``block_until_ready``. Milliseconds.
"""

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = {  # name: (d_in, d_out, how many per forward pass)
    "output head": (576, 49152, 1),
    "q, o": (576, 576, 60),
    "k, v": (576, 192, 60),
    "gate, up": (576, 1536, 60),
    "down": (1536, 576, 30),
}
TOKENS = (1, 2, 4, 8)


def median_ms(f, *args, n: int = 50) -> float:
    """Median wall time of ``f(*args)`` over ``n`` calls after one warm-up call."""
    f(*args).block_until_ready()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main() -> None:
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {jax.devices()}")
    print("| matmul | count per pass | " + " | ".join(f"{t} tokens" for t in TOKENS) + " |")
    print("|---|---|" + "---|" * len(TOKENS))
    key = jax.random.PRNGKey(0)
    totals = np.zeros(len(TOKENS))
    matmul = jax.jit(lambda x, w: x @ w)
    for name, (d_in, d_out, count) in SHAPES.items():
        w = jax.random.normal(key, (d_in, d_out), jnp.float32)
        ms = [median_ms(matmul, jax.random.normal(key, (t, d_in), jnp.float32), w) for t in TOKENS]
        totals += count * np.array(ms)
        print(f"| {name} | {count} | " + " | ".join(f"{m:.3f}" for m in ms) + " |")
    print("| all, times count | | " + " | ".join(f"{t:.1f}" for t in totals) + " |")


if __name__ == "__main__":
    main()
