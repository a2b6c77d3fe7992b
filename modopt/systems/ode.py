"""ODE modules: the observables of ``x' = f(t, x, u; w)`` at given times (DESIGN 7)."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._module import AbstractSystemModule
from .._results import RESULTS
from ._common import (
    SystemSolution,
    adjoint_for,
    as_state_fn,
    as_times,
    integration_result,
    params_dtype,
    poison,
)


def _default_observable(t, x, u, params):
    return x


class ODEModule(AbstractSystemModule):
    """A module whose map is the solution of an ODE, observed at fixed times.

    For one input ``u`` (a condition: a dose, a drive amplitude; any pytree the vector
    field understands) the module integrates ``x' = vector_field(t, x, u, params)``
    from ``x(t0) = initial_state(u, params)`` and returns
    ``observable(t, x(t), u, params)`` stacked over `times`, shape ``(T, ...)``.
    The trainable parameters are the arrays in `params`.

    **Arguments:**

    - `vector_field`: ``(t, x, u, params) -> dx/dt``.
    - `params`: a pytree of float arrays (the block's parameters).
    - `initial_state`: a fixed array, or ``(u, params) -> x0`` (for a trainable initial
      state put it in `params`: ``lambda u, p: p["x0"]``).
    - `times`: observation times, strictly increasing, all ``>= t0``.
    - `observable`: ``(t, x, u, params) -> y``; default the state.
    - `t0`: the initial time.
    - `solver`: any Diffrax solver: ``Tsit5()`` (default), ``Kvaerno5()`` for stiff
      systems.
    - `rtol`, `atol`, `dt0`, `max_steps`: for Diffrax's PID controller.
    - `sensitivity`: ``"auto"``, ``"forward"`` or ``"reverse"`` (see
      `modopt.AbstractSystemModule`).
    - `throw`: raise on a failed integration instead of returning NaN.
    - `in_shape`, `mass`: as for every module.

    A failed integration (max_steps, a blow-up) gives NaN outputs, which the optimizer
    rejects; `solve` returns the result code with advice.
    """

    vector_field: Callable = eqx.field(static=True)
    params: object
    initial_state: Callable = eqx.field(static=True, converter=as_state_fn)
    times: tuple[float, ...] = eqx.field(static=True, converter=as_times)
    observable: Callable = eqx.field(static=True, default=_default_observable)
    t0: float = eqx.field(static=True, default=0.0)
    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    dt0: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=4096)
    sensitivity: str = eqx.field(static=True, kw_only=True, default="auto")
    throw: bool = eqx.field(static=True, default=False)
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=None)
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        if self.times[0] < self.t0:
            raise ValueError(
                f"ODEModule: the first observation time {self.times[0]} is before t0={self.t0}."
            )
        if not callable(self.vector_field):
            raise TypeError("ODEModule: vector_field must be callable (t, x, u, params).")

    def solve(self, u=None) -> SystemSolution:
        """Integrate for input `u`. **Returns:** a `SystemSolution` with a result code."""
        dtype = params_dtype(self.params)
        ts = jnp.asarray(self.times, dtype)
        x0 = self.initial_state(u, self.params)

        def term(t, x, args):
            return self.vector_field(t, x, u, self.params)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(term), self.solver, self.t0, self.times[-1], self.dt0, x0,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
            adjoint=adjoint_for(self.sensitivity), max_steps=self.max_steps, throw=False,
        )
        result = integration_result(sol.result)
        ok = result == RESULTS.successful
        outputs = jax.vmap(lambda t, x: self.observable(t, x, u, self.params))(ts, sol.ys)
        solution = SystemSolution(
            ts=ts, states=poison(sol.ys, ok), outputs=poison(outputs, ok),
            result=result, stats=sol.stats,
        )
        if self.throw:
            solution = result.error_if(solution, ~ok)
        return solution

    def __call__(self, u=None):
        return self.solve(u).outputs
