"""Circuit design by the engine: free element values, a specification as a weighted
least-squares loss, many random starts run as one ``vmap``-ped batch.

`multistart` is the entry point; the examples in `modopt.circuits.design_examples`
build on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics
from ..flow import flow
from ..steps import AdaptiveMass, RiemannianSteps


def random_starts(truth: dict, count: int, spread: float, seed: int) -> list[dict]:
    """`count` starts, each value times a factor drawn uniformly in
    ``[1 - spread, 1 + spread]``."""
    rng = np.random.default_rng(seed)
    return [{k: v * rng.uniform(1 - spread, 1 + spread) for k, v in truth.items()}
            for _ in range(count)]


def _stack(modules):
    params = [eqx.filter(m, eqx.is_inexact_array) for m in modules]
    static = eqx.filter(modules[0], eqx.is_inexact_array, inverse=True)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *params), static


def multistart(
    build: Callable[[dict], eqx.Module],
    starts: list[dict],
    inputs,
    targets,
    *,
    weights=None,
    method: str = "steps",
    iterations: int = 100,
    mass: float = 1e-2,
    s1: float = 60.0,
    gtol: float | None = 1e-20,
) -> dict:
    """Fit `build(values)` from every start at once.

    The loss is ``0.5 sum(weights * (y - targets)^2)`` and the output metric
    ``diag(weights)`` (Gauss-Newton in the weighted outputs).

    **Arguments:**

    - `build`: element values (linear scale) -> a module whose trainable leaves are the
      circuit's free values.
    - `starts`: one dict of values per start.
    - `inputs`, `targets`: the samples (frequencies, source values ...) and the spec.
    - `weights`: per output, broadcast against `targets` (default ones).
    - `method`: ``"steps"`` (the paper's Algorithm 1 with a Levenberg-Marquardt
      adaptive mass, `iterations` steps) or ``"flow"`` (the Riemannian flow to
      pseudo-time `s1`, stopping when ``g^T G^-1 g < gtol``).

    **Returns:** ``{"models": batched final module, "loss": (starts,),
    "history": (starts, iterations) losses (steps; the flow's saved losses),
    "wall_time_s" (compilation included)}``; a start whose steps all failed keeps its
    start values.
    """
    inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
    weights = jnp.ones_like(targets) if weights is None else jnp.broadcast_to(
        jnp.asarray(weights, targets.dtype), targets.shape)
    output_metric = metrics.Diagonal(weights)

    def loss(predictions, target):
        return 0.5 * jnp.sum(weights * (predictions - target) ** 2)

    params, static = _stack([build(values) for values in starts])

    if method == "steps":
        optimizer = RiemannianSteps(1.0, output_metric=output_metric, mass=mass,
                                    adaptive_mass=AdaptiveMass(min_scale=1e-12))

        def fit(p):
            model = eqx.combine(p, static)

            def body(carry, _):
                model, state = carry
                updates, state = optimizer.update(model, state, loss, inputs, targets)
                return (eqx.apply_updates(model, updates), state), state.value

            (model, state), history = jax.lax.scan(
                body, (model, optimizer.init(model)), None, length=iterations)
            final = loss(jax.vmap(model)(inputs), targets)
            return eqx.filter(model, eqx.is_inexact_array), final, history
    elif method == "flow":
        def fit(p):
            solution = flow(eqx.combine(p, static), loss, inputs, targets,
                            output_metric=output_metric, mass=mass, s1=s1, gtol=gtol,
                            max_steps=4096)
            return (eqx.filter(solution.model, eqx.is_inexact_array), solution.value,
                    solution.losses)
    else:
        raise ValueError(f"multistart: method must be 'steps' or 'flow', got {method!r}.")

    run = eqx.filter_jit(jax.vmap(fit))
    began = time.perf_counter()
    fitted, final, history = jax.block_until_ready(run(params))
    seconds = time.perf_counter() - began
    return {"models": eqx.combine(fitted, static), "loss": np.asarray(final),
            "history": np.asarray(history), "wall_time_s": seconds}


def unstack(batched, index: int):
    """The `index`-th module of a batch made by `multistart`."""
    return jax.tree.map(lambda x: x[index] if eqx.is_array(x) else x, batched)
