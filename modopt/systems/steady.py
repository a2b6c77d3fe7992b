"""Steady-state modules: the observable of a root of ``F(x, u; w) = 0`` (DESIGN 7).

The root is found by Newton (Optimistix); if Newton fails from the initial guess, the
state is first relaxed towards equilibrium by integrating ``x' = F`` (Diffrax) and Newton
is run again from there. Derivatives come from the implicit function theorem only,
``dx*/dw = -(dF/dx)^-1 dF/dw`` at the root, never from unrolled iterations or from the
settling trajectory: every search step is behind `jax.lax.stop_gradient`, and the final
Newton solve (started from the point the search found) is differentiated by
`optimistix.ImplicitAdjoint`. That derivative is a JVP rule with a linear tangent, so
the module works with forward (`jax.jvp`, `jax.jacfwd`) and reverse (`jax.grad`,
`jax.jacrev`) mode alike, whatever its `sensitivity`.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx

from .._module import AbstractSystemModule
from .._results import RESULTS
from ._common import SystemSolution, as_state_fn, params_dtype, poison


def _default_observable(x, u, params):
    return x


def all_finite(tree) -> jax.Array:
    """Whether every entry of every array in `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def default_tolerance(dtype) -> float:
    """``sqrt(eps)`` of `dtype`: the default Newton ``rtol`` and ``atol``.

    Newton converges quadratically, so a last step below ``sqrt(eps)`` (relative to the
    state) leaves an error near ``eps``.
    """
    return float(jnp.finfo(dtype).eps) ** 0.5


class FiniteLU(lx.AbstractLinearSolver):
    """`lineax.LU` that returns zeros instead of a non-finite solution.

    Lineax raises (a runtime error, even with ``throw=False`` when transposed in reverse
    mode) on a non-finite solution. The derivative solves of the system modules meet
    those only where the solve failed (a singular Jacobian at a failed root, a rejected
    trial step), whose outputs are NaN-poisoned anyway: there a zero tangent is harmless
    and raising would abort a whole optimisation.
    """

    def init(self, operator, options):
        return lx.LU().init(operator, options)

    def compute(self, state, vector, options):
        solution, result, stats = lx.LU().compute(state, vector, options)
        finite = all_finite(solution)
        solution = jax.tree.map(lambda x: jnp.where(finite, x, 0), solution)
        return solution, result, stats

    def transpose(self, state, options):
        return lx.LU().transpose(state, options)

    def conj(self, state, options):
        return lx.LU().conj(state, options)

    def assume_full_rank(self):
        return True


def implicit_root(fn, newton, y_start, args, max_steps):
    """A root of ``fn(y, args)`` by Newton from `y_start`, differentiable in `args`.

    The derivative is the implicit function theorem's (`optimistix.ImplicitAdjoint`),
    never the unrolled iterations; `y_start` carries no derivative.

    **Returns:** ``(root, ok, steps)``: `ok` when Newton converged to a finite point,
    `steps` the number of Newton iterations.
    """
    sol = optx.root_find(
        fn, newton, jax.lax.stop_gradient(y_start), args=args, max_steps=max_steps,
        adjoint=optx.ImplicitAdjoint(linear_solver=FiniteLU()), throw=False,
    )
    ok = (sol.result == optx.RESULTS.successful) & all_finite(sol.value)
    return sol.value, ok, sol.stats["num_steps"]


class SteadyState(AbstractSystemModule):
    """A module whose map is a steady state: the root ``x*`` of ``F(x, u, params) = 0``.

    For one input ``u`` the module solves ``residual(x, u, params) = 0`` for ``x`` by
    Newton's method, starting from ``initial_guess(u, params)``, and returns
    ``observable(x*, u, params)``. The trainable parameters are the arrays in `params`.

    When Newton fails from the guess (it diverges, cycles or meets a singular
    Jacobian) and `fallback` is on, the module integrates the relaxation dynamics
    ``x' = settle_field * F(x, u, params)`` (or ``x' = settle_field(x, u, params)``)
    with a stiff solver from the guess until the state stops moving (a Diffrax
    steady-state event) or until ``t = t_settle``, then runs Newton again from there.
    This finds the root that the relaxation dynamics converge to: for a physical system
    ``x' = F`` (a gene network, a circuit) the default ``settle_field=1.0`` relaxes to a
    stable equilibrium; use ``-1.0`` when the root wanted is stable for ``x' = -F``, or a
    callable such as ``lambda x, u, p: -jax.jacfwd(F)(x, u, p).T @ F(x, u, p)`` (descent
    on ``|F|^2 / 2``, which stops at any regular root).

    Derivatives are exact at the root and come from the implicit function theorem only
    (`optimistix.ImplicitAdjoint`), so `jax.jvp`/`jax.jacfwd` and `jax.grad`/`jax.jacrev`
    both work; `sensitivity` only tells the engine which mode to prefer.

    **Arguments:**

    - `residual`: ``(x, u, params) -> F``, an array of the shape of ``x``.
    - `params`: a pytree of float arrays (the block's parameters).
    - `initial_guess`: a fixed array, or ``(u, params) -> x_guess``. Its shape is the
      shape of the state.
    - `observable`: ``(x, u, params) -> y``; default the state.
    - `rtol`, `atol`: Newton's tolerances (it stops when a step is below
      ``atol + rtol |x|`` and ``|F| < atol``); ``None`` (default) for ``sqrt(eps)`` of
      the parameters' dtype.
    - `max_steps`: the most Newton iterations per attempt.
    - `fallback`: whether to settle by integration when Newton fails from the guess.
    - `settle_field`: a float ``s`` for ``x' = s F(x, u, params)`` (default ``1.0``), or
      a callable ``(x, u, params) -> dx/dt`` whose stable equilibria are roots of ``F``.
    - `t_settle`: the longest settling time.
    - `settle_solver`: the Diffrax solver for settling (default ``Kvaerno5()``).
    - `settle_max_steps`: the settling integration's step limit.
    - `sensitivity`: ``"auto"``, ``"forward"`` or ``"reverse"`` (see
      `modopt.AbstractSystemModule`); both modes are always available here.
    - `throw`: raise when no root is found instead of returning NaN.
    - `in_shape`, `mass`: as for every module.

    When no root is found the outputs are NaN, which the optimizer rejects, and `solve`
    returns `modopt.RESULTS.steady_state_not_found`.
    """

    residual: Callable = eqx.field(static=True)
    params: object
    initial_guess: Callable = eqx.field(static=True, converter=as_state_fn)
    observable: Callable = eqx.field(static=True, default=_default_observable)
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=64)
    fallback: bool = eqx.field(static=True, default=True)
    settle_field: float | Callable = eqx.field(static=True, default=1.0)
    t_settle: float = eqx.field(static=True, default=1e3)
    settle_solver: diffrax.AbstractSolver = diffrax.Kvaerno5()
    settle_max_steps: int = eqx.field(static=True, default=4096)
    sensitivity: str = eqx.field(static=True, kw_only=True, default="auto")
    throw: bool = eqx.field(static=True, default=False)
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=None)
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        if not callable(self.residual):
            raise TypeError("SteadyState: residual must be callable (x, u, params).")
        if not (callable(self.settle_field) or isinstance(self.settle_field, (int, float))):
            raise TypeError(
                "SteadyState: settle_field must be a float (x' = settle_field * F) or a "
                f"callable (x, u, params) -> dx/dt, got {type(self.settle_field).__name__}."
            )
        if not self.t_settle > 0:
            raise ValueError(f"SteadyState: t_settle must be positive, got {self.t_settle}.")
        if int(self.max_steps) < 1:
            raise ValueError(f"SteadyState: max_steps must be >= 1, got {self.max_steps}.")
        # Static shape check, when the shapes do not depend on an input we do not have.
        u = None if self.in_shape is None else jax.ShapeDtypeStruct(self.in_shape, float)
        try:
            shapes = jax.eval_shape(self._evaluate_guess, u, self.params)
        except Exception:  # the model needs the input's values: checked when called
            return
        self._check_shapes(*shapes)

    def _newton(self, dtype) -> optx.Newton:
        tol = default_tolerance(dtype)
        return optx.Newton(
            rtol=tol if self.rtol is None else self.rtol,
            atol=tol if self.atol is None else self.atol,
        )

    def _evaluate_guess(self, u, params):
        x_guess = self.initial_guess(u, params)
        return x_guess, self.residual(x_guess, u, params)

    def _check_shapes(self, x_guess, residual):
        if jax.tree.structure(residual) != jax.tree.structure(x_guess) or any(
            a.shape != b.shape
            for a, b in zip(jax.tree.leaves(residual), jax.tree.leaves(x_guess))
        ):
            raise ValueError(
                "SteadyState: residual(x, u, params) must have the shape of the state x "
                f"(the initial guess), got {jax.tree.map(lambda a: a.shape, residual)} for "
                f"a state of shape {jax.tree.map(lambda a: a.shape, x_guess)}."
            )

    def _settle(self, x_start, u, params, tol):
        """Relax towards equilibrium; the returned point is only a Newton start."""
        residual, field = self.residual, self.settle_field
        if callable(field):

            def rhs(t, x, args):
                return field(x, *args)

        else:
            scale = float(field)

            def rhs(t, x, args):
                return jax.tree.map(lambda f: scale * f, residual(x, *args))

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(rhs), self.settle_solver, 0.0, self.t_settle, None, x_start,
            args=(u, params), saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            event=diffrax.Event(diffrax.steady_state_event()),
            max_steps=self.settle_max_steps, throw=False,
        )
        x_settled = jax.tree.map(lambda y: y[-1], sol.ys)
        # A blown-up relaxation gives no usable start: fall back to the guess itself.
        return jax.tree.map(
            lambda a, b: jnp.where(all_finite(x_settled), a, b), x_settled, x_start
        )

    def solve(self, u=None) -> SystemSolution:
        """Find the steady state for input `u`.

        **Returns:** a `SystemSolution` with `ts` = ``inf`` (the state as ``t -> inf``),
        `states` the root, `outputs` the observable (NaN if no root was found), `result`
        and `stats` (``newton_steps`` of the final solve, ``settled``: whether the
        fallback integration was needed).

        **Raises:** `ValueError` at trace time if the residual does not have the shape of
        the state; with ``throw=True``, an error with the result's message when no root
        is found.
        """
        params = self.params
        dtype = params_dtype(params)
        newton = self._newton(dtype)
        residual = self.residual

        def fn(x, args):
            return residual(x, *args)

        self._check_shapes(*jax.eval_shape(self._evaluate_guess, u, params))
        x_guess = self.initial_guess(u, params)

        # The search (Newton from the guess, then settling) is not differentiated.
        frozen = jax.lax.stop_gradient((x_guess, u, params))
        x_frozen, u_frozen, p_frozen = frozen
        first = optx.root_find(
            fn, newton, x_frozen, args=(u_frozen, p_frozen),
            max_steps=self.max_steps, throw=False,
        )
        first_ok = (first.result == optx.RESULTS.successful) & all_finite(first.value)
        if self.fallback:
            tol = default_tolerance(dtype) if self.rtol is None else self.rtol
            # Under vmap the cond runs both branches: a sample that Newton solved settles
            # from its root, where the steady-state event stops the integration at once.
            settle_from = jax.tree.map(
                lambda a, b: jnp.where(first_ok, a, b), first.value, x_frozen
            )
            x_start = jax.lax.cond(
                first_ok,
                lambda: first.value,
                lambda: self._settle(settle_from, u_frozen, p_frozen, tol),
            )
        else:
            x_start = first.value
        x_start = jax.lax.stop_gradient(x_start)

        # The final solve: from a converged point it takes one or two steps, and its
        # derivative is the implicit function theorem's.
        x_star, ok, steps = implicit_root(fn, newton, x_start, (u, params), self.max_steps)
        result = RESULTS.where(ok, RESULTS.successful, RESULTS.steady_state_not_found)
        outputs = self.observable(x_star, u, params)
        solution = SystemSolution(
            ts=jnp.asarray(jnp.inf, dtype), states=poison(x_star, ok),
            outputs=poison(outputs, ok), result=result,
            stats={"newton_steps": steps, "settled": ~first_ok},
        )
        if self.throw:
            solution = result.error_if(solution, ~ok)
        return solution

    def __call__(self, u=None):
        return self.solve(u).outputs
