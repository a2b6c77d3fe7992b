"""Fitting helpers shared by the biology examples (`morphogen_example`,
`toggle_example`): options, fits, Fisher summaries, loss scans and profiles, tables,
``summary.json`` and the loss plot.

Every fit minimises ``0.5 sum(((y - data) / sigma)^2)`` with the output metric
``diag(1 / sigma^2)``, so the metric ``G`` is the Fisher information plus the mass, and
each estimate is judged by its Cramer-Rao standard error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics
from .._plotting import pyplot
from ..flow import flow
from ..steps import AdaptiveMass, RiemannianSteps

FIT_DEFAULTS = {"method": "steps", "mass": 1e-3, "initial_mass_scale": 1.0,
                "min_mass_scale": 1e-6, "gtol": 1e-8, "max_steps": 200, "s1": 40.0}


def _options(defaults: dict, config: dict) -> dict:
    """`defaults` updated by `config`, one level deep for tables (``times``, ``scan``)."""
    options = dict(defaults)
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            options[key] = {**defaults[key], **value}
        else:
            options[key] = value
    return options


def _linear(module) -> dict:
    """A module's log-scale parameters in linear scale."""
    return {name: float(np.exp(value)) for name, value in module.params.items()}


def _weighted_loss(weights):
    def loss(predictions, targets):
        return 0.5 * jnp.sum(weights * (predictions - targets) ** 2)

    return loss


@eqx.filter_jit
def _step(optimizer, model, state, conditions, targets, weights):
    """One Riemannian step, compiled once per model structure."""
    updates, state = optimizer.update(model, state, _weighted_loss(weights), conditions,
                                      targets)
    return eqx.apply_updates(model, updates), state


@eqx.filter_jit
def evaluate(module, conditions):
    """``jax.vmap(module)(conditions)``, compiled once per model structure."""
    return jax.vmap(module)(conditions)


def fit_parameters(
    module, conditions, data, sigma, *, method: str = "steps", mass=1e-3,
    initial_mass_scale: float = 1.0, gtol: float = 1e-8, max_steps: int = 200, s1: float = 40.0,
    min_mass_scale: float = 1e-6, learning_rate: float = 1.0,
):
    """Fit `module`'s parameters to `data` by weighted least squares.

    The loss is ``0.5 sum(((module(c) - data) / sigma)^2)`` over the conditions and the
    output metric ``diag(1 / sigma^2)``: the metric is the Fisher information plus
    ``mass``.

    **Arguments:**

    - `module`: a system module; its `params` are the start.
    - `conditions`: the inputs, one row per experiment.
    - `data`, `sigma`: the measurements and their standard deviations, shaped like
      ``jax.vmap(module)(conditions)``.
    - `method`: ``"steps"`` for Riemannian steps with a Levenberg-Marquardt mass
      (`modopt.RiemannianSteps` with `modopt.AdaptiveMass`, the paper's Algorithm 1),
      stopped when ``g^T u < gtol``; ``"flow"`` for the Riemannian gradient flow
      (`modopt.flow`) to pseudo-time `s1`, stopped by the same test. The steps compile
      one step (a few seconds); the flow traces the model about ten times, which takes
      40-90 s for these examples.
    - `mass`: the mass ``D = mass I``, the flow's and the steps' base value; or a
      per-array pytree (see `modopt.RiemannianSteps`).
    - `initial_mass_scale`: steps only: the first step's mass is
      ``mass * initial_mass_scale``; after each step it is halved if the loss fell and
      quadrupled (and the step undone) if it rose. A large first mass keeps the first
      steps short when the start is far off.
    - `gtol`: the stopping test on ``g^T u``.
    - `max_steps`: the most steps (or flow solver steps).
    - `s1`: the flow's final pseudo-time.
    - `min_mass_scale`: steps only: the smallest mass multiplier. With 1 the mass never
      drops below `mass`, which keeps steps short along poorly determined directions.
    - `learning_rate`: steps only: the step is ``-learning_rate * u``.

    **Returns:** ``(fitted_module, info)``: `info` has the method, ``converged``, the final
    ``loss``, ``num_steps``, ``wall_time_s`` (compilation included) and ``history``.

    **Raises:** `ValueError` for an unknown `method`.
    """
    if method not in ("steps", "flow"):
        raise ValueError(f"fit_parameters: method must be 'steps' or 'flow', got {method!r}.")
    weights = jnp.asarray(1.0 / np.asarray(sigma) ** 2)
    conditions, targets = jnp.asarray(conditions), jnp.asarray(data)
    metric = metrics.Diagonal(weights)
    if isinstance(mass, (int, float, np.ndarray, jax.Array)) and np.ndim(mass) == 0:
        mass = jax.tree.map(lambda _: mass, eqx.filter(module, eqx.is_inexact_array))
    # arrays, not floats: a jitted step is traced once for every mass
    mass = jax.tree.map(jnp.asarray, mass)
    loss = _weighted_loss(weights)

    began = time.perf_counter()
    if method == "flow":
        solution = flow(module, loss, conditions, targets, output_metric=metric, mass=mass,
                        s1=s1, gtol=gtol, max_steps=max_steps)
        fitted, converged = solution.model, bool(solution.converged)
        num_steps = int(solution.stats["num_steps"])
        reached = np.isfinite(np.asarray(solution.losses))
        history = {"s": np.asarray(solution.ts)[reached].tolist(),
                   "loss": np.asarray(solution.losses)[reached].tolist()}
    else:
        adaptive = AdaptiveMass(min_scale=min_mass_scale, max_scale=1e12)
        optimizer = RiemannianSteps(learning_rate, output_metric=metric, mass=mass,
                                    adaptive_mass=adaptive)
        state = optimizer.init(module)
        scale = jnp.asarray(initial_mass_scale, state.mass_scale.dtype)
        fitted, state = module, eqx.tree_at(lambda s: s.mass_scale, state, scale)
        losses, converged = [], False
        while not converged and len(losses) < int(max_steps):
            fitted, state = _step(optimizer, fitted, state, conditions, targets, weights)
            losses.append(float(state.value))
            converged = float(state.riemannian_norm2) < gtol
        num_steps = len(losses)
        history = {"step": list(range(len(losses))), "loss": losses}
    seconds = time.perf_counter() - began
    final = float(loss(evaluate(fitted, conditions), targets))
    return fitted, {"method": method, "converged": converged, "loss": final,
                    "num_steps": num_steps, "wall_time_s": seconds, "history": history}


def fisher_summary(names, jacobian, rank_rtol: float = 1e-10) -> dict:
    """What a weighted Jacobian says about identifiability.

    **Returns:** the singular values of `jacobian` (square roots of the Fisher
    information's eigenvalues), their smallest-to-largest ratio, the numerical rank (those
    above ``rank_rtol`` times the largest), the weakest direction (the right singular
    vector of the smallest, in the log-parameters, sign fixed so its largest entry is
    positive), and, at full rank, the Cramer-Rao standard errors of the log-parameters and
    their correlation matrix (``None`` otherwise).
    """
    _, singular, vt = np.linalg.svd(jacobian, full_matrices=False)
    weakest = vt[-1] * np.sign(vt[-1][np.argmax(np.abs(vt[-1]))])
    rank = int(np.sum(singular > rank_rtol * singular[0]))
    summary = {
        "singular_values": singular.tolist(),
        "ratio": float(singular[-1] / singular[0]),
        "rank": rank,
        "weakest_direction": dict(zip(names, weakest.tolist())),
        "standard_errors": None,
        "correlation": None,
    }
    if rank == len(names):
        covariance = np.linalg.inv(jacobian.T @ jacobian)
        errors = np.sqrt(np.diag(covariance))
        summary["standard_errors"] = dict(zip(names, errors.tolist()))
        summary["correlation"] = (covariance / np.outer(errors, errors)).tolist()
    return summary


def _with_log_shift(module, shift, names):
    """`module` with the log-parameters `names` (all if ``None``) shifted by `shift`: those
    parameters times ``exp(shift)``."""
    return eqx.tree_at(lambda m: m.params, module, {
        name: value + shift if names is None or name in names else value
        for name, value in module.params.items()
    })


def scaling_scan(module, conditions, data, sigma, factors, names=None) -> np.ndarray:
    """The weighted least-squares loss of `module` with the parameters `names` (default
    all) multiplied by each of `factors`, the others held; e.g. all three rates of the
    morphogen line, the direction ``(D, k, s) -> (a D, a k, a s)``.

    **Returns:** the losses, shape ``(len(factors),)``.
    """
    weights = jnp.asarray(1.0 / np.asarray(sigma) ** 2)
    shifts = jnp.log(jnp.asarray(factors))
    names = None if names is None else tuple(names)
    return np.asarray(_scan(module, jnp.asarray(conditions), jnp.asarray(data), weights,
                            shifts, names))


@eqx.filter_jit
def _scan(module, conditions, data, weights, shifts, names):
    def loss(shift):
        predictions = jax.vmap(_with_log_shift(module, shift, names))(conditions)
        return 0.5 * jnp.sum(weights * (predictions - data) ** 2)

    return jax.vmap(loss)(shifts)


def _scan_factors(low: float, high: float, num: int) -> np.ndarray:
    """Log-spaced factors from `low` to `high` that include 1 exactly."""
    half = max(int(num) // 2, 1) + 1
    return np.unique(np.concatenate([np.geomspace(low, 1.0, half), [1.0],
                                     np.geomspace(1.0, high, half)]))


def profile_loss(fitted, name: str, factors, conditions, data, sigma, **fit_options) -> dict:
    """The profile of the loss in one parameter: for each of `factors`, that parameter is
    held at ``factors * estimate`` and the others are refitted (warm-started outward from
    the estimate). The parameter is held by a mass of 1e12 on it alone.

    **Arguments:** `fitted` (the fitted module), `name` (the parameter), `factors`
    (multipliers, including 1), the data of `fit_parameters` and its `fit_options`.

    **Returns:** ``{"values", "losses", "converged"}``, sorted by value; ``values`` are
    the held parameter's linear values as they ended (within 1e-6 of the grid).
    """
    factors = np.sort(np.asarray(factors, dtype=float))
    mass = float(fit_options.pop("mass", 1e-3))
    masses = jax.tree.map(lambda _: mass, eqx.filter(fitted, eqx.is_inexact_array))
    masses = eqx.tree_at(lambda m: m.params[name], masses, 1e12)
    results = {}
    centre = int(np.argmin(np.abs(np.log(factors))))
    for side in (factors[centre:], factors[:centre + 1][::-1]):
        module = fitted
        for factor in side:
            held = eqx.tree_at(lambda m: m.params[name], module,
                               fitted.params[name] + np.log(factor))
            module, info = fit_parameters(held, conditions, data, sigma, mass=masses,
                                          **fit_options)
            results[float(factor)] = (float(np.exp(module.params[name])), info["loss"],
                                      info["converged"])
    rows = [results[f] for f in sorted(results)]
    return {"values": [r[0] for r in rows], "losses": [r[1] for r in rows],
            "converged": [r[2] for r in rows]}


def _profile_interval(profile: dict, minimum: float, rise: float) -> list:
    """Where the profile first rises `rise` above `minimum` on each side of its lowest
    point (log-linear interpolation); ``None`` on a side where it never does."""
    values, losses = np.log(profile["values"]), np.asarray(profile["losses"]) - minimum
    best = int(np.argmin(losses))
    ends = []
    for side in (range(best, -1, -1), range(best, len(values))):
        side = list(side)
        end = None
        for i, j in zip(side, side[1:]):
            if losses[i] < rise <= losses[j]:
                t = (rise - losses[i]) / (losses[j] - losses[i])
                end = float(np.exp(values[i] + t * (values[j] - values[i])))
                break
        ends.append(end)
    return ends


def _rows(truth: dict, start: dict, estimate: dict, errors: dict) -> dict:
    """Per parameter: truth, start, estimate, relative error, standard error of the log
    and ``z = log(estimate / truth) / standard error``."""
    return {
        name: {
            "truth": truth[name], "start": start[name], "estimate": estimate[name],
            "relative_error": estimate[name] / truth[name] - 1,
            "standard_error": errors[name],
            "z_score": float(np.log(estimate[name] / truth[name]) / errors[name]),
        }
        for name in truth
    }


def _print_rows(rows: dict) -> None:
    for name, row in rows.items():
        print(f"{name:>8}: truth {row['truth']:.5g}  estimate {row['estimate']:.5g}  "
              f"error {100 * row['relative_error']:+.2f} %  "
              f"se {100 * row['standard_error']:.2f} %  z {row['z_score']:+.2f}")


def _write_json(out: Path, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def _plot_losses(out: Path, fits: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, info in fits.items():
        history = info["history"]
        x = history.get("s", history.get("step"))
        ax.semilogy(x, history["loss"], ".-", label=label)
    ax.set_xlabel("pseudo-time s" if "s" in next(iter(fits.values()))["history"] else "step")
    ax.set_ylabel("weighted least-squares loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
