"""Programs compiled ahead of time (``pass_jax.compiled``): kept by static arguments and
argument shapes, compiled concurrently by ``compile_all`` and then found by ``executable``."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from pass_jax import compiled


@partial(jax.jit, static_argnames=("power",))
def _f(x, power: int):
    return jnp.sum(x**power, axis=-1)


def test_compile_all_then_executable_finds_each_program():
    compiled.forget()
    xs = [jnp.arange(n, dtype=jnp.float32) for n in (3, 5, 7)]
    jobs = [(_f, (), {"power": p}, (x,)) for x in xs for p in (1, 2)]
    done = []
    seconds = compiled.compile_all([*jobs, jobs[0]], threads=3, done=lambda: done.append(1))
    assert seconds > 0 and len(done) == 7  # every job reported, the repeated one compiled once
    assert len(compiled._EXECUTABLES) == 6
    for _, _, kw, (x,) in jobs:
        program, took = compiled.executable(_f, (), kw, x)
        assert took == 0.0  # compiled already
        np.testing.assert_allclose(program(x), np.sum(np.asarray(x) ** kw["power"]))
    # another shape or dtype is another program
    _, took = compiled.executable(_f, (), {"power": 2}, jnp.arange(4, dtype=jnp.int32))
    assert took > 0 and len(compiled._EXECUTABLES) == 7
    compiled.compile_all(jobs)  # all compiled already: nothing added
    assert len(compiled._EXECUTABLES) == 7
    compiled.forget()
    assert not compiled._EXECUTABLES
