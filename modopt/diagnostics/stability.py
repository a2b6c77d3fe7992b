"""The stability experiment of Theorem 3: train on a data set S and on S with one sample
replaced, from the same start, and compare the largest output difference over training
with the bound ``2 sqrt(n) kappa^2 L / (xi mu)`` (see `modopt.diagnostics.contraction`)."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..flow import flow
from ..losses import SquaredError
from ..metrics import AbstractOutputMetric
from .contraction import contraction


def _half_squared(prediction, target):
    return 0.5 * jnp.sum((prediction - target) ** 2)


def replace_one_sample(
    model,
    inputs,
    targets,
    new_input,
    new_target,
    *,
    output_metric: AbstractOutputMetric,
    mass: float,
    index: int = 0,
    s1: float = 10.0,
    checkpoints: int = 21,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
) -> dict:
    """Run the flow on ``S = (inputs, targets)`` and on S with sample `index` replaced
    by ``(new_input, new_target)``, with the summed squared error, and measure.

    **Returns:** a dict of NumPy values:

    - ``times``: the checkpoints in pseudo-time;
    - ``difference``: ``|y_S - y_S'|`` (stacked outputs on the inputs of S) there, and
      ``max_difference`` its largest value;
    - ``xi``, ``kappa``, ``loss_gradient_bound``: along both runs (``(2, checkpoints)``);
    - ``bound``: ``2 sqrt(n) kappa^2 L / (xi mu)`` with the worst values met (smallest
      xi, largest kappa and L), which bounds the difference at all times when both
      runs start together;
    - ``converged``: whether both flows reached `s1` or stopped converged.

    **Raises:** `ValueError` for an `index` outside the data or a non-positive `mass`.
    """
    n = inputs.shape[0]
    if not 0 <= index < n:
        raise ValueError(f"replace_one_sample: index {index} is outside 0..{n - 1}.")
    if not mass > 0:
        raise ValueError(f"replace_one_sample: mass must be positive, got {mass}.")
    loss = SquaredError()
    times = jnp.linspace(0.0, s1, checkpoints)
    replaced = (inputs.at[index].set(new_input), targets.at[index].set(new_target))
    static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
    runs, measures, converged = [], [], []
    for x, y in ((inputs, targets), replaced):
        solution = flow(model, loss, x, y, output_metric=output_metric, mass=mass, s1=s1,
                        ts=times, save_trajectory=True, stepsize_controller=stepsize_controller,
                        max_steps=16_384)
        converged.append(bool(solution.converged))

        def measure(p, x=x, y=y):
            c = contraction(eqx.combine(p, static), loss, x, y, output_metric=output_metric,
                            mass=mass, per_sample_loss=_half_squared)
            outputs = jax.vmap(eqx.combine(p, static))(inputs)  # always on the inputs of S
            return outputs, c.xi, c.kappa, c.loss_gradient_bound

        outputs, xi, kappa, gradient_bound = jax.lax.map(measure, solution.trajectory)
        runs.append(outputs)
        measures.append((xi, kappa, gradient_bound))
    difference = np.asarray(jnp.sqrt(jnp.sum((runs[0] - runs[1]) ** 2, axis=(1, 2))))
    xi, kappa, gradient_bound = (np.stack([np.asarray(m[i]) for m in measures])
                                 for i in range(3))
    # A singular NTK (more outputs than the parameters can move) gives no bound.
    bound = (2 * np.sqrt(n) * kappa.max() ** 2 * gradient_bound.max() / (xi.min() * mass)
             if xi.min() > 0 else np.inf)
    return {"times": np.asarray(times), "difference": difference,
            "max_difference": float(difference.max()), "xi": xi, "kappa": kappa,
            "loss_gradient_bound": gradient_bound, "bound": float(bound), "mass": mass,
            "samples": n, "converged": all(converged)}
