"""Discrete Riemannian steps (the paper's Algorithm 1) as pure ``init``/``update``."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ._results import RESULTS
from .bounds import Box
from .gradient import linearise
from .jacobian import AbstractJacobian, AutoJacobian
from .linalg import AbstractBlockSolver, AutoSolve
from .metrics import AbstractOutputMetric


class AdaptiveMass(eqx.Module):
    """Levenberg-Marquardt-style mass: after a step the loss is evaluated again; the
    step is accepted if the loss did not rise (mass ``*= decrease``) and rejected
    otherwise (mass ``*= increase``, parameters unchanged). The multiplier stays in
    ``[min_scale, max_scale]``.

    `retries`: after a rejected step, try again up to this many times within the same
    update, each time with the mass raised by `increase`, from the same Jacobian (one
    loss evaluation and one solve each, no pass through the model's derivatives). An
    update is rejected only when all its tries are.

    `undamped_norm`: also report ``StepState.undamped_norm2``, the norm at `min_scale`
    (one more solve per update), for a convergence test that a plateau cannot pass."""

    increase: float = 4.0
    decrease: float = 0.5
    min_scale: float = 1e-6
    max_scale: float = 1e8
    retries: int = eqx.field(static=True, default=0)
    undamped_norm: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not (self.increase > 1 and 0 < self.decrease < 1):
            raise ValueError("AdaptiveMass needs increase > 1 and 0 < decrease < 1.")
        if not (isinstance(self.retries, int) and self.retries >= 0):
            raise ValueError(f"AdaptiveMass: retries must be an int >= 0, got {self.retries!r}.")


class StepState(eqx.Module):
    """State of `RiemannianSteps`.

    - `mass_scale`: multiplier of the mass (1 unless adaptive).
    - `value`: the loss at the parameters before the last update.
    - `riemannian_norm2`: ``g^T u`` there.
    - `undamped_norm2`: ``g^T u`` with the adaptive mass at its least scale
      (`AdaptiveMass.min_scale`), from the same Jacobian: the norm without the damping.
      Where it is much larger than `riemannian_norm2`, the mass, not the metric, keeps
      the steps short (a plateau of the loss, not a minimum). NaN unless
      ``AdaptiveMass(undamped_norm=True)``.
    - `gradient`: ``g`` there (the structure of the parameters; zeros before the first
      update). Bound-constrained callers use its signs to choose the active set.
    - `accepted`: whether the last update was applied.
    - `result`: a `RESULTS` code for the last update.
    - `count`: number of updates made.
    """

    mass_scale: jax.Array
    value: jax.Array
    riemannian_norm2: jax.Array
    undamped_norm2: jax.Array
    gradient: object
    accepted: jax.Array
    result: RESULTS
    count: jax.Array


class RiemannianSteps(eqx.Module):
    """Riemannian gradient steps ``w_a <- w_a - learning_rate * u_a`` for every block.

    Pure functions in the optax style, safe inside your own ``jit`` and ``vmap``:

    ```python
    opt = modopt.RiemannianSteps(0.5, output_metric=modopt.metrics.Identity(), mass=1e-2)
    state = opt.init(model)
    updates, state = opt.update(model, state, loss_fn, inputs, targets)
    model = eqx.apply_updates(model, updates)
    ```

    A step whose loss or direction is not finite is never applied (updates are zero,
    ``state.result`` says why). With `adaptive_mass`, a step that raises the loss is
    rejected as well.

    **Arguments:** `learning_rate`; `output_metric`; `mass` (float or per-array pytree);
    `adaptive_mass` (an `AdaptiveMass` or ``None``); `max_norm` (``None`` or the largest
    norm of an update, all parameters together: longer steps are shortened to it, a
    trust region; an accepted shortened step leaves the adaptive mass as it is, as the
    step was set by the cap, not by the mass; Euclidean, or in the metric of `box`);
    `box` (``None`` or a `modopt.Box`: bounds on the parameters, kept by Coleman-Li
    scaling of the mass and by clipping); `jacobian`; `solver`.
    """

    learning_rate: float
    output_metric: AbstractOutputMetric
    mass: object
    adaptive_mass: AdaptiveMass | None = None
    max_norm: float | None = None
    box: Box | None = None
    jacobian: AbstractJacobian = AutoJacobian()
    solver: AbstractBlockSolver = AutoSolve()

    def __check_init__(self):
        if self.max_norm is not None and not self.max_norm > 0:
            raise ValueError(f"RiemannianSteps: max_norm must be positive, got {self.max_norm}.")

    def init(self, model) -> StepState:
        params = eqx.filter(model, eqx.is_inexact_array)
        dtype = jax.tree.leaves(params)[0].dtype
        return StepState(
            mass_scale=jnp.ones((), dtype),
            value=jnp.full((), jnp.inf, dtype),
            riemannian_norm2=jnp.full((), jnp.inf, dtype),
            undamped_norm2=jnp.full((), jnp.inf, dtype),
            gradient=jax.tree.map(jnp.zeros_like, params),
            accepted=jnp.array(True),
            # A JAX array (not the enum's NumPy constant), so that a jitted step sees the
            # same kind of input on every call and does not compile twice.
            result=RESULTS.where(jnp.array(False), RESULTS.successful, RESULTS.successful),
            count=jnp.zeros((), jnp.int32),
        )

    def update(self, model, state: StepState, loss_fn: Callable, inputs, targets):
        """One step. **Returns:** ``(updates, state)``; apply with ``eqx.apply_updates``."""
        value, gradient, _, solve, _ = linearise(
            model, loss_fn, inputs, targets, output_metric=self.output_metric, mass=self.mass,
            jacobian=self.jacobian, solver=self.solver, box=self.box,
        )
        params = eqx.filter(model, eqx.is_inexact_array)
        distance = (None if self.max_norm is None or self.box is None
                    else self.box.distance(params, gradient))

        def norm2_of(direction):
            return sum(jax.tree.leaves(jax.tree.map(lambda g, u: jnp.sum(g * u),
                                                    gradient, direction)))

        def attempt(scale):
            direction = solve(scale)
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                        for x in jax.tree.leaves((value, direction))]))
            norm2 = norm2_of(direction)
            updates = jax.tree.map(lambda u: -self.learning_rate * u, direction)
            capped = jnp.array(False)
            if self.max_norm is not None:
                v = jax.tree.map(jnp.ones_like, updates) if distance is None else distance
                norm = jnp.sqrt(sum(jnp.sum(u**2 / w) for u, w in
                                    zip(jax.tree.leaves(updates), jax.tree.leaves(v))))
                capped = norm > self.max_norm
                shrink = jnp.where(capped, self.max_norm / jnp.where(capped, norm, 1), 1)
                updates = jax.tree.map(lambda u: (u * shrink).astype(u.dtype), updates)
            if self.box is not None:
                updates = jax.tree.map(lambda new, w: (new - w).astype(w.dtype),
                                       self.box.clip(eqx.apply_updates(params, updates)),
                                       params)
            ok = finite
            if self.adaptive_mass is not None:
                new_value = loss_fn(jax.vmap(eqx.apply_updates(model, updates))(inputs),
                                    targets)
                ok = ok & jnp.isfinite(new_value) & (new_value <= value)
            return updates, norm2, finite, capped, ok

        scale = state.mass_scale
        updates, norm2, finite, capped, ok = attempt(scale)
        undamped_norm2 = jnp.full_like(norm2, jnp.nan)
        a = self.adaptive_mass
        if a is not None and a.undamped_norm:
            undamped_norm2 = norm2_of(solve(jnp.asarray(a.min_scale, scale.dtype)))
        if a is not None:
            def raise_(scale):
                return jnp.clip(scale * a.increase, a.min_scale, a.max_scale).astype(scale.dtype)

            if a.retries:
                def retrying(carry):
                    tries, scale, *_, ok = carry
                    return (tries < a.retries) & ~ok & jnp.isfinite(value) & (scale < a.max_scale)

                def retry(carry):
                    tries, scale, *_ = carry
                    scale = raise_(scale)
                    return (tries + 1, scale, *attempt(scale))

                _, scale, updates, norm2, finite, capped, ok = jax.lax.while_loop(
                    retrying, retry, (jnp.zeros((), jnp.int32), scale, updates, norm2, finite,
                                      capped, ok))
            decreased = jnp.maximum(scale * a.decrease, a.min_scale).astype(scale.dtype)
            scale = jnp.where(ok, jnp.where(capped, scale, decreased), raise_(scale))
        updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), updates)
        state = StepState(
            mass_scale=scale,
            value=value,
            riemannian_norm2=norm2,
            undamped_norm2=undamped_norm2,
            gradient=gradient,
            accepted=ok,
            result=RESULTS.where(~finite, RESULTS.nonfinite_step, RESULTS.successful),
            count=state.count + 1,
        )
        return updates, state
