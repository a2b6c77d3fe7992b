"""Pieces shared by the dynamical-system modules: constants, adjoints, solutions."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._results import RESULTS


class Constant:
    """A fixed array held as static data (hashable, never a trainable parameter).

    ``Constant(value)(u, params)`` returns the value in the parameters' dtype; it is how
    a fixed initial state is stored. A trainable initial state is a parameter instead:
    ``initial_state=lambda u, p: p["x0"]``.
    """

    def __init__(self, value):
        self.value = np.asarray(value, dtype=np.float64)
        self.value.setflags(write=False)

    def __call__(self, u, params):
        return jnp.asarray(self.value, dtype=params_dtype(params))

    def __hash__(self):
        return hash((self.value.shape, self.value.tobytes()))

    def __eq__(self, other):
        return isinstance(other, Constant) and np.array_equal(self.value, other.value)

    def __repr__(self):
        return f"Constant(shape={self.value.shape})"


def as_state_fn(value):
    """A callable ``(u, params) -> array``: callables pass, arrays become `Constant`."""
    return value if callable(value) else Constant(value)


def as_times(times) -> tuple[float, ...]:
    """Observation times as a static, hashable, strictly increasing tuple.

    **Raises:** `ValueError` for an empty, non-1-D, non-finite or unsorted input.
    """
    array = np.asarray(times, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"times must be a non-empty 1-D sequence, got shape {array.shape}.")
    if not np.all(np.isfinite(array)) or np.any(np.diff(array) <= 0):
        raise ValueError("times must be finite and strictly increasing.")
    return tuple(float(t) for t in array)


def params_dtype(params):
    leaves = [x for x in jax.tree.leaves(params) if eqx.is_inexact_array(x)]
    return leaves[0].dtype if leaves else jnp.result_type(float)


def adjoint_for(sensitivity: str) -> diffrax.AbstractAdjoint:
    """Diffrax's adjoint for a sensitivity mode: forward mode cannot pass a custom_vjp."""
    if sensitivity == "forward":
        return diffrax.ForwardMode()
    return diffrax.RecursiveCheckpointAdjoint()


def poison(tree, ok):
    """`tree` where `ok`, NaN elsewhere: a failed solve must never look like data."""
    return jax.tree.map(lambda y: jnp.where(ok, y, jnp.nan), tree)


def integration_result(diffrax_result) -> RESULTS:
    """modopt's code for a Diffrax result: any failure becomes ``integration_failed``."""
    ok = diffrax_result == diffrax.RESULTS.successful
    return RESULTS.where(ok, RESULTS.successful, RESULTS.integration_failed)


class SystemSolution(eqx.Module):
    """What a dynamical-system module computed for one input.

    - `ts`: the observation times.
    - `states`: the state at `ts` (for a DAE, a tuple ``(x, z)``).
    - `outputs`: the observables at `ts` (what the module returns when called).
    - `result`: a `modopt.RESULTS` code (``successful``, ``integration_failed``, ...).
    - `stats`: the solver's statistics.

    On failure `states` and `outputs` are NaN, never stale numbers.
    """

    ts: jax.Array
    states: object
    outputs: jax.Array
    result: RESULTS
    stats: dict

    @property
    def succeeded(self) -> jax.Array:
        return self.result == RESULTS.successful
