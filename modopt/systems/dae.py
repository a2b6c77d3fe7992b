"""Semi-explicit index-1 DAE modules: ``x' = F(t, x, z, u; w)``, ``0 = G(t, x, z, u; w)``
with ``dG/dz`` invertible, observed at fixed times (DESIGN 7).

The DAE is integrated as an ODE in the differential state ``x``: at every evaluation of
the vector field the algebraic equations are solved for ``z`` by Newton (Optimistix,
differentiated by the implicit function theorem), so that ``z = z(t, x)`` exactly (to
Newton's tolerance) wherever ``F`` is evaluated. Newton is warm-started from a carried
copy of ``z`` that Diffrax integrates alongside ``x`` with the index-reduced equation
``z' = -(dG/dz)^-1 (dG/dt + dG/dx x')``. That copy is only a starting point: it enters
Newton behind `jax.lax.stop_gradient`, so neither the outputs nor their derivatives
depend on it and the algebraic constraint never drifts (its equation is differentiated
only so that implicit solvers see the exact Jacobian of the augmented system). The
algebraic variables returned at the observation times are solved again by Newton at the
integrated ``x``, and differentiated there by the implicit function theorem.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jax.flatten_util import ravel_pytree

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
from .steady import FiniteLU, default_tolerance, implicit_root


def _default_observable(t, x, z, u, params):
    return jnp.concatenate([jnp.ravel(x), jnp.ravel(z)])


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


class IndexOneDAE(AbstractSystemModule):
    """A module whose map is the solution of a semi-explicit index-1 DAE at fixed times.

    For one input ``u`` the module integrates

        x' = vector_field(t, x, z, u, params),
        0  = algebraic(t, x, z, u, params),

    from ``x(t0) = initial_state(u, params)`` and the consistent ``z(t0)`` (the root of
    the algebraic equations nearest, for Newton, to ``initial_algebraic(u, params)``), and
    returns ``observable(t, x(t), z(t), u, params)`` stacked over `times`, shape
    ``(T, ...)``. The algebraic Jacobian ``dG/dz`` must be invertible along the solution
    (index 1). Sensitivities are those of the DAE: the algebraic solves are
    differentiated by the implicit function theorem and the integration by Diffrax
    (forward or reverse, by `sensitivity`).

    **Arguments:**

    - `vector_field`: ``(t, x, z, u, params) -> dx/dt``.
    - `algebraic`: ``(t, x, z, u, params) -> residual``, of the shape of ``z``.
    - `params`: a pytree of float arrays (the block's parameters).
    - `initial_state`: ``x(t0)``: a fixed array, or ``(u, params) -> x0``.
    - `initial_algebraic`: a guess for ``z(t0)``: a fixed array, or
      ``(u, params) -> z_guess``. Its shape is the shape of ``z``.
    - `times`: observation times, strictly increasing, all ``>= t0``.
    - `observable`: ``(t, x, z, u, params) -> y``; default the concatenation of the
      flattened ``x`` and ``z``.
    - `t0`: the initial time.
    - `solver`: any Diffrax solver; default ``Kvaerno5()`` (DAEs are usually stiff).
    - `rtol`, `atol`, `dt0`, `max_steps`: for Diffrax's PID controller.
    - `newton_rtol`, `newton_atol`: the tolerances of the algebraic Newton solves;
      ``None`` (default) for ``sqrt(eps)`` of the parameters' dtype (Newton converges
      quadratically, so the result is accurate to about ``eps``).
    - `newton_max_steps`: the most Newton iterations per algebraic solve.
    - `jump_ts`: times where the inputs jump or kink (source corners); the solver steps
      onto them instead of across.
    - `max_condition`: the largest condition number of ``dG/dz`` at the consistent
      initial point still taken as regular; ``None`` (default) for ``0.01 / eps``.
    - `sensitivity`: ``"auto"``, ``"forward"`` or ``"reverse"`` (see
      `modopt.AbstractSystemModule`).
    - `throw`: raise on a failure instead of returning NaN.
    - `in_shape`, `mass`: as for every module.

    **Raises:** `ValueError` when the algebraic residual does not have the shape of ``z``
    or the vector field that of ``x`` (at construction when the shapes can be found
    without an input, otherwise when the module is first called).

    **Failures** give NaN outputs and a result code from `solve`:
    `modopt.RESULTS.singular_algebraic_jacobian` when ``dG/dz`` is singular (or
    ill-conditioned beyond `max_condition`) at the initial point or Newton on the
    algebraic equations fails there or at an observation time, and
    `modopt.RESULTS.integration_failed` when the integration does not reach the last
    observation time (Newton failing inside the integration shows up this way too).
    """

    vector_field: Callable = eqx.field(static=True)
    algebraic: Callable = eqx.field(static=True)
    params: object
    initial_state: Callable = eqx.field(static=True, converter=as_state_fn)
    initial_algebraic: Callable = eqx.field(static=True, converter=as_state_fn)
    times: tuple[float, ...] = eqx.field(static=True, converter=as_times)
    observable: Callable = eqx.field(static=True, default=_default_observable)
    t0: float = eqx.field(static=True, default=0.0)
    solver: diffrax.AbstractSolver = diffrax.Kvaerno5()
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    dt0: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=4096)
    newton_rtol: float | None = eqx.field(static=True, default=None)
    newton_atol: float | None = eqx.field(static=True, default=None)
    newton_max_steps: int = eqx.field(static=True, default=32)
    max_condition: float | None = eqx.field(static=True, default=None)
    jump_ts: tuple[float, ...] = eqx.field(static=True, default=(), converter=tuple)
    sensitivity: str = eqx.field(static=True, kw_only=True, default="auto")
    throw: bool = eqx.field(static=True, default=False)
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=None)
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        if not callable(self.vector_field):
            raise TypeError("IndexOneDAE: vector_field must be callable (t, x, z, u, params).")
        if not callable(self.algebraic):
            raise TypeError("IndexOneDAE: algebraic must be callable (t, x, z, u, params).")
        if self.times[0] < self.t0:
            raise ValueError(
                f"IndexOneDAE: the first observation time {self.times[0]} is before "
                f"t0={self.t0}."
            )
        # Static shape check, when the shapes do not depend on an input we do not have.
        u = None if self.in_shape is None else jax.ShapeDtypeStruct(self.in_shape, float)
        try:
            shapes = jax.eval_shape(self._evaluate_initial, u, self.params)
        except Exception:  # the model needs the input's values: checked when called
            return
        self._check_shapes(*shapes)

    def _evaluate_initial(self, u, params):
        x0 = self.initial_state(u, params)
        z0 = self.initial_algebraic(u, params)
        t = jnp.asarray(self.t0, params_dtype(params))
        return x0, z0, self.vector_field(t, x0, z0, u, params), self.algebraic(
            t, x0, z0, u, params
        )

    def _check_shapes(self, x0, z0, dx, g):
        if _shapes(g) != _shapes(z0) or jax.tree.structure(g) != jax.tree.structure(z0):
            raise ValueError(
                "IndexOneDAE: the algebraic residual G(t, x, z, u, params) must have the "
                f"shape of z: got {_shapes(g)} for z of shape {_shapes(z0)} (from "
                "initial_algebraic). An index-1 DAE has exactly one algebraic equation "
                "per algebraic variable."
            )
        if _shapes(dx) != _shapes(x0) or jax.tree.structure(dx) != jax.tree.structure(x0):
            raise ValueError(
                "IndexOneDAE: the vector field F(t, x, z, u, params) must have the shape "
                f"of x: got {_shapes(dx)} for x of shape {_shapes(x0)} (from initial_state)."
            )

    def _newton(self, dtype) -> optx.Newton:
        tol = default_tolerance(dtype)
        return optx.Newton(
            rtol=tol if self.newton_rtol is None else self.newton_rtol,
            atol=tol if self.newton_atol is None else self.newton_atol,
        )

    def _solve_algebraic(self, newton, t, x, z_guess, u, params):
        """``z`` with ``G(t, x, z) = 0`` by Newton from `z_guess` (no derivative in the
        guess; the implicit function theorem in everything else), and whether it worked."""
        algebraic = self.algebraic
        if not ravel_pytree(z_guess)[0].size:  # no algebraic variables: an ODE
            return z_guess, jnp.array(True)

        def fn(z, args):
            t, x, u, params = args
            return algebraic(t, x, z, u, params)

        z, ok, _ = implicit_root(fn, newton, z_guess, (t, x, u, params), self.newton_max_steps)
        return z, ok

    def _algebraic_condition(self, t, x, z, u, params):
        """The condition number of ``dG/dz`` (not differentiated)."""
        t, x, z, u, params = jax.lax.stop_gradient((t, x, z, u, params))
        flat_z, unravel = ravel_pytree(z)

        def g(flat):
            return ravel_pytree(
                self.algebraic(t, x, unravel(flat), u, params)
            )[0]

        if not flat_z.size:
            return jnp.ones((), flat_z.dtype)
        jac = jax.jacfwd(g)(flat_z)
        singular_values = jnp.linalg.svd(jac, compute_uv=False)
        # 0 / 0 (a zero Jacobian) is NaN, which fails every comparison: singular.
        return singular_values[0] / singular_values[-1]

    def _controller(self):
        controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol)
        jumps = [t for t in self.jump_ts if self.t0 < t < self.times[-1]]
        if jumps:
            return diffrax.ClipStepSizeController(controller, jump_ts=sorted(jumps))
        return controller

    def solve(self, u=None) -> SystemSolution:
        """Integrate for input `u`.

        **Returns:** a `SystemSolution` with `states` the tuple ``(x, z)`` at `ts`, a
        result code (NaN states and outputs on failure) and `stats`: Diffrax's, plus
        ``algebraic_condition``, the condition number of ``dG/dz`` at the initial point.

        **Raises:** `ValueError` at trace time for mismatched shapes; with ``throw=True``
        an error carrying the result's message on failure.
        """
        params = self.params
        dtype = params_dtype(params)
        ts = jnp.asarray(self.times, dtype)
        t0 = jnp.asarray(self.t0, dtype)
        newton = self._newton(dtype)
        vector_field, algebraic = self.vector_field, self.algebraic

        self._check_shapes(*jax.eval_shape(self._evaluate_initial, u, params))
        x0 = self.initial_state(u, params)
        z_guess = self.initial_algebraic(u, params)

        # The consistent initial algebraic state, only as a starting point: outputs
        # are solved again (and differentiated) at the observation times.
        z0, z0_ok = self._solve_algebraic(
            newton, t0, *jax.lax.stop_gradient((x0, z_guess, u, params))
        )
        max_condition = (
            0.01 / float(jnp.finfo(dtype).eps) if self.max_condition is None
            else self.max_condition
        )
        condition = self._algebraic_condition(t0, x0, z0, u, params)
        regular = z0_ok & (condition <= max_condition)
        # Not regular: integrate a zero field from a finite point (cheap, and poisoned).
        z_start = jax.tree.map(
            lambda a, b: jnp.where(regular, a, jnp.zeros_like(b)), z0, z_guess
        )

        def term(t, y, args):
            x, z_carried = y
            z, ok = self._solve_algebraic(newton, t, x, z_carried, u, params)
            dx = vector_field(t, x, z, u, params)
            # The warm start's drift: z' = -(dG/dz)^-1 (dG/dt + dG/dx x').
            _, g_dot = jax.jvp(
                lambda t_, x_: algebraic(t_, x_, z, u, params),
                (t, x), (jnp.ones_like(t), dx),
            )
            g_z = lx.JacobianLinearOperator(
                lambda z_, _: algebraic(t, x, z_, u, params), z
            )
            if ravel_pytree(z)[0].size:
                dz = lx.linear_solve(g_z, g_dot, FiniteLU(), throw=False).value
                dz = jax.tree.map(jnp.negative, dz)
            else:
                dz = z
            # A failed algebraic solve poisons the step, which the controller rejects.
            dx = jax.tree.map(lambda d: jnp.where(ok, d, jnp.nan), dx)
            return jax.tree.map(lambda d: jnp.where(regular, d, jnp.zeros_like(d)), (dx, dz))

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(term), self.solver, self.t0, self.times[-1], self.dt0,
            (x0, z_start),
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=self._controller(),
            adjoint=adjoint_for(self.sensitivity), max_steps=self.max_steps, throw=False,
        )
        xs, z_carried = sol.ys
        zs, zs_ok = jax.vmap(
            lambda t, x, z: self._solve_algebraic(newton, t, x, z, u, params)
        )(ts, xs, z_carried)

        result = integration_result(sol.result)
        singular = ~regular | ((result == RESULTS.successful) & ~jnp.all(zs_ok))
        result = RESULTS.where(singular, RESULTS.singular_algebraic_jacobian, result)
        ok = result == RESULTS.successful
        outputs = jax.vmap(lambda t, x, z: self.observable(t, x, z, u, params))(ts, xs, zs)
        solution = SystemSolution(
            ts=ts, states=poison((xs, zs), ok), outputs=poison(outputs, ok),
            result=result,
            stats={**sol.stats, "algebraic_condition": condition},
        )
        if self.throw:
            solution = result.error_if(solution, ~ok)
        return solution

    def __call__(self, u=None):
        return self.solve(u).outputs

