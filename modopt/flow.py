"""The Riemannian gradient flow ``dw_a/ds = -G_a(w)^-1 g_a(w)`` with Diffrax (DESIGN 4)."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._results import RESULTS
from .bounds import Box
from .gradient import linearise, riemannian_direction
from .jacobian import AbstractJacobian, AutoJacobian
from .linalg import AbstractBlockSolver, AutoSolve
from .metrics import AbstractOutputMetric
from .rosenbrock import LinearisedFlowTerm, Ros2


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class _AbstractGuard(diffrax.AbstractStepSizeController):
    """Rejects a step whose end state is not finite or has a non-finite loss
    (`is_good`) and retries it with half the step; after `patience` such rejections in
    a row the solve ends with ``diffrax.RESULTS.nonfinite`` (the state stays the last
    accepted one)."""

    controller: eqx.AbstractVar[diffrax.AbstractStepSizeController]
    patience: eqx.AbstractVar[int]
    is_good: eqx.AbstractVar[Callable]

    def wrap(self, direction):
        return type(self)(self.controller.wrap(direction), self.patience, self.is_good)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return tnext, (state, jnp.zeros((), jnp.int32))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        inner, count = state
        keep, next_t0, next_t1, jump, new_inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        bad = ~(_all_finite(y1_candidate) & self.is_good(y1_candidate))
        new_inner = jax.tree.map(lambda old, new: jnp.where(bad, old, new), inner, new_inner)
        count = jnp.where(bad, count + 1, 0)
        result = diffrax.RESULTS.where(count >= self.patience, diffrax.RESULTS.nonfinite, result)
        return (
            keep & ~bad,
            jnp.where(bad, t0, next_t0),
            jnp.where(bad, t0 + 0.5 * (t1 - t0), next_t1),
            jump & ~bad,
            (new_inner, count),
            result,
        )


class _Guard(_AbstractGuard):
    controller: diffrax.AbstractStepSizeController
    patience: int = eqx.field(static=True)
    is_good: Callable


class _AdaptiveGuard(_AbstractGuard, diffrax.AbstractAdaptiveStepSizeController):
    controller: diffrax.AbstractAdaptiveStepSizeController
    patience: int = eqx.field(static=True)
    is_good: Callable

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm


class FlowSolution(eqx.Module):
    """The result of `flow`.

    - `model`: the final model (the last finite state if the flow failed).
    - `value`: its loss; `riemannian_norm2`: its ``g^T u``.
    - `ts`, `losses`: the loss history at the save times (``inf`` where not reached).
    - `trajectory`, `trajectory_ts`: the parameters and their pseudo-times if
      `save_trajectory` asked for them (at `ts`, or at every solver step, padded with
      ``inf`` times to `max_steps`), else ``None``.
    - `result`: a `modopt.RESULTS` code; ``successful`` when ``s1`` was reached,
      ``event_occurred`` when the gradient-norm stop fired. `converged` is either.
    - `stats`: Diffrax's statistics (``num_steps``, ``num_accepted_steps``, ...).
    """

    model: object
    value: jax.Array
    riemannian_norm2: jax.Array
    ts: jax.Array
    losses: jax.Array
    trajectory: object
    trajectory_ts: jax.Array | None
    result: RESULTS
    stats: dict

    @property
    def converged(self) -> jax.Array:
        return (self.result == RESULTS.successful) | (self.result == RESULTS.event_occurred)


def flow(
    model,
    loss_fn: Callable,
    inputs,
    targets,
    *,
    output_metric: AbstractOutputMetric,
    mass,
    s1: float = 20.0,
    ode_solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    gtol: float | None = None,
    ts=None,
    save_trajectory: bool | str = False,
    max_steps: int = 4096,
    jacobian: AbstractJacobian = AutoJacobian(),
    solver: AbstractBlockSolver = AutoSolve(),
    blocks=None,
    box: Box | None = None,
    nonfinite_patience: int = 8,
    progress_meter: diffrax.AbstractProgressMeter = diffrax.NoProgressMeter(),
    throw: bool = False,
) -> FlowSolution:
    """Integrate the Riemannian gradient flow in pseudo-time ``s`` from 0 to `s1`.

    **Arguments:** as `riemannian_gradient` for `model` ... `blocks`, and:

    - `s1`: the final pseudo-time. Near a well-posed least-squares optimum the residual
      decays like ``exp(-s)``, so ``s1 ~ log(1/tolerance)``.
    - `ode_solver`: any Diffrax solver (default ``Tsit5()``), or `modopt.Ros2()`, a
      linearly implicit solver for the flow's stiffness; `stepsize_controller`
      (default ``PIDController(rtol=1e-4, atol=1e-8)``); `dt0` (``None``: automatic
      with an adaptive controller; required with ``ConstantStepSize``).
    - `gtol`: stop when ``g^T u < gtol`` (an event); ``None`` disables it.
    - `ts`: save times for the loss history (default 51 points in ``[0, s1]``);
      `save_trajectory`: ``True`` saves the parameters at `ts` too, ``"steps"`` at every
      accepted solver step (for `modopt.diagnostics.path_action`).
    - `max_steps`: Diffrax's step limit.
    - `box`: bounds (`modopt.Box`): the flow then runs in the box with the mass
      ``(D + |g|) / v`` of `Box`, which grows without bound at a bound the flow heads
      for. Everything is evaluated at the state clipped to the box, and the final state
      is clipped: a step that overshoots a bound (the Gauss-Newton part of the metric
      can outweigh the mass next to it) leaves that parameter on the bound, as the
      steps' updates are clipped, rather than being rejected over and over (on
      Bruno_JExpBot2016, 2 of the first 12 starts ended so, their steps shrinking to
      nothing at a bound).
    - `nonfinite_patience`: after this many consecutive non-finite step attempts, each
      retried with half the step, the flow ends with ``RESULTS.nonfinite_step``.
    - `progress_meter`: e.g. ``diffrax.TqdmProgressMeter()``.
    - `throw`: raise on failure instead of returning a result code.

    **Returns:** a `FlowSolution`.
    """
    if not s1 > 0:
        raise ValueError(f"s1 must be positive, got {s1}.")
    if save_trajectory not in (True, False, "steps"):
        raise ValueError(f"save_trajectory must be True, False or 'steps', got "
                         f"{save_trajectory!r}.")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    dtype = jax.tree.leaves(params)[0].dtype
    if stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(rtol=1e-4, atol=1e-8)
    adaptive = isinstance(stepsize_controller, diffrax.AbstractAdaptiveStepSizeController)
    if not adaptive and dt0 is None:
        raise ValueError("dt0 is required with a non-adaptive stepsize_controller.")
    ts = jnp.linspace(0.0, s1, 51, dtype=dtype) if ts is None else jnp.asarray(ts, dtype)

    metric = dict(output_metric=output_metric, mass=mass, jacobian=jacobian, solver=solver,
                  blocks=blocks, box=box)

    def inside(p):
        return p if box is None else box.clip(p)

    def model_at(p):
        return eqx.combine(inside(p), static)

    def direction(p):
        return riemannian_direction(model_at(p), loss_fn, inputs, targets, **metric)

    def linearise_at(p):
        *_, solve, product = linearise(model_at(p), loss_fn, inputs, targets, **metric)
        return solve, product

    def vector_field(s, p, args):
        d = direction(p)
        # NaN makes Diffrax reject the step; the guard ends the flow if it persists.
        return jax.tree.map(lambda u: jnp.where(d.is_finite, -u, jnp.nan), d.direction)

    def loss_at(s, p, args):
        return loss_fn(jax.vmap(model_at(p))(inputs), targets)

    def is_good(p):
        return jnp.isfinite(loss_at(None, p, None))

    guard_type = _AdaptiveGuard if adaptive else _Guard
    guard = guard_type(stepsize_controller, nonfinite_patience, is_good)

    def clipped(s, p, args):
        return inside(p)

    subs = [diffrax.SubSaveAt(t1=True), diffrax.SubSaveAt(ts=ts, fn=loss_at)]
    if save_trajectory == "steps":
        subs.append(diffrax.SubSaveAt(t0=True, steps=True, fn=clipped))
    elif save_trajectory:
        subs.append(diffrax.SubSaveAt(ts=ts, fn=clipped))
    event = None
    if gtol is not None:
        event = diffrax.Event(lambda s, p, args, **kw: direction(p).riemannian_norm2 < gtol)
    term = (LinearisedFlowTerm(vector_field, linearise_at) if isinstance(ode_solver, Ros2)
            else diffrax.ODETerm(vector_field))
    sol = diffrax.diffeqsolve(
        term, ode_solver, 0.0, s1, dt0, params,
        saveat=diffrax.SaveAt(subs=subs), stepsize_controller=guard, event=event,
        max_steps=max_steps, throw=False, progress_meter=progress_meter,
    )
    final = inside(jax.tree.map(lambda y: y[-1], sol.ys[0]))
    final_model = eqx.combine(final, static)
    d = direction(final)
    result = RESULTS.promote(sol.result)
    result = RESULTS.where(result == RESULTS.nonfinite, RESULTS.nonfinite_step, result)
    solution = FlowSolution(
        model=final_model, value=d.value, riemannian_norm2=d.riemannian_norm2,
        ts=ts, losses=sol.ys[1], trajectory=sol.ys[2] if save_trajectory else None,
        trajectory_ts=sol.ts[2] if save_trajectory else None,
        result=result, stats=sol.stats,
    )
    if throw:
        failed = ~solution.converged
        solution = result.error_if(solution, failed)
    return solution
