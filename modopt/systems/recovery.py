"""Parameter recovery: fit a dynamical-system module to noisy synthetic data by the flow,
and judge the estimate against the noise (Cramer-Rao standard errors)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics
from .._plotting import pyplot
from ..diagnostics.action import path_action
from ..flow import flow


@dataclass(frozen=True)
class RecoveryProblem:
    """A model family to recover.

    - `build(times, params)`: the module for linear-scale parameters (a dict of floats);
      its trainable `params` hold the same names in the scale `to_linear` undoes.
    - `nominal`: the true parameters.
    - `conditions`: the inputs, one row per experiment.
    - `to_linear`: maps a trained parameter value to linear scale (``exp`` for log).
    - `output_names`: names of the observed outputs, for plots.
    """

    build: Callable
    nominal: dict
    conditions: np.ndarray
    to_linear: Callable = np.exp
    output_names: tuple[str, ...] = ()


def noisy_data(clean, noise: float, floor: float, seed: int):
    """``clean + sigma * N(0, 1)`` with ``sigma = noise * |clean| + floor``."""
    sigma = noise * np.abs(np.asarray(clean)) + floor
    rng = np.random.default_rng(seed)
    return np.asarray(clean) + sigma * rng.standard_normal(sigma.shape), sigma


def start_parameters(nominal: dict, offset: float, seed: int) -> dict:
    """Each parameter multiplied by ``1 + offset`` or ``1 - offset`` (random signs)."""
    signs = np.random.default_rng(seed + 1).choice([-1.0, 1.0], size=len(nominal))
    return {name: value * (1 + s * offset) for (name, value), s in zip(nominal.items(), signs)}


def weighted_jacobian(module, conditions, sigma):
    """``J / sigma``: the Jacobian of every output (all conditions, flattened) in the
    module's parameters (sorted by name), each row divided by that output's `sigma`, by
    forward mode. ``J^T J`` is the Fisher information.

    **Returns:** ``(names, jacobian)``, `jacobian` of shape ``(outputs, parameters)``.
    """
    names = sorted(module.params)
    jac = np.asarray(_jacobian(module, jnp.asarray(conditions)))
    return names, jac / np.asarray(sigma).reshape(-1, 1)


@eqx.filter_jit
def _jacobian(module, conditions):
    names = sorted(module.params)
    module = module.with_sensitivity("forward")

    def outputs(theta):
        m = eqx.tree_at(lambda m: m.params, module, dict(zip(names, theta)))
        return jax.vmap(m)(conditions).reshape(-1)

    return jax.jacfwd(outputs)(jnp.stack([module.params[n] for n in names]))


def standard_errors(module, conditions, sigma) -> dict:
    """Cramer-Rao standard errors of the trained parameters: ``sqrt(diag(F^-1))`` with
    ``F = J^T diag(1/sigma^2) J`` (`weighted_jacobian`)."""
    names, jac = weighted_jacobian(module, conditions, sigma)
    return dict(zip(names, np.sqrt(np.diag(np.linalg.inv(jac.T @ jac)))))


def recover(
    problem: RecoveryProblem,
    times,
    *,
    noise: float = 0.05,
    noise_floor: float = 0.01,
    start_offset: float = 0.5,
    seed: int = 0,
    mass: float = 1e-3,
    s1: float = 40.0,
    gtol: float = 1e-6,
    max_steps: int = 1000,
    progress: bool = False,
    action: bool = False,
) -> dict:
    """Simulate, add noise, start `start_offset` off and fit by the Riemannian flow.

    The loss is the weighted least squares ``0.5 sum(((y - data) / sigma)^2)`` and the
    output metric ``diag(1/sigma^2)``, so ``G`` is the Fisher information plus the mass.

    **Returns:** a JSON-ready summary: per parameter the truth, start, estimate, relative
    error, standard error and z-score ``log(estimate / truth) / standard error``; the
    flow's result, steps, wall time and loss history; and the data for plotting. With
    `action`, also the action, action gap and Hamiltonian of the flow's path (every
    solver step; `modopt.diagnostics.path_action`) under ``"action"``.
    """
    conditions = jnp.asarray(problem.conditions)
    clean = jax.vmap(problem.build(times, problem.nominal))(conditions)
    data, sigma = noisy_data(clean, noise, noise_floor, seed)
    weights = jnp.asarray(1.0 / sigma**2)
    start = start_parameters(problem.nominal, start_offset, seed)
    module = problem.build(times, start)

    def loss(predictions, targets):
        return 0.5 * jnp.sum(weights * (predictions - targets) ** 2)

    meter = diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter()
    began = time.perf_counter()
    solution = flow(
        module, loss, conditions, jnp.asarray(data), output_metric=metrics.Diagonal(weights),
        mass=mass, s1=s1, gtol=gtol, max_steps=max_steps, progress_meter=meter,
        save_trajectory="steps" if action else False,
    )
    seconds = time.perf_counter() - began
    path_report = None
    if action:
        path_report = path_action(module, solution.trajectory, solution.trajectory_ts, loss,
                                  conditions, jnp.asarray(data),
                                  output_metric=metrics.Diagonal(weights), mass=mass).summary()
    fitted = solution.model
    errors = standard_errors(fitted, conditions, sigma)
    table = {}
    for name, truth in problem.nominal.items():
        estimate = float(problem.to_linear(float(fitted.params[name])))
        table[name] = {
            "truth": truth,
            "start": start[name],
            "estimate": estimate,
            "relative_error": estimate / truth - 1,
            "standard_error": float(errors[name]),
            "z_score": float(np.log(estimate / truth) / errors[name]),
        }
    losses = np.asarray(solution.losses)
    reached = np.isfinite(losses)
    summary = {
        "result": str(solution.result),
        "converged": bool(solution.converged),
        "loss": float(solution.value),
        "loss_at_truth": float(loss(clean, data)),
        "num_data": int(data.size),
        "num_steps": int(solution.stats["num_steps"]),
        "wall_time_s": seconds,
        "noise": noise,
        "noise_floor": noise_floor,
        "parameters": table,
        "max_abs_z": max(abs(row["z_score"]) for row in table.values()),
        "history": {"s": np.asarray(solution.ts)[reached].tolist(),
                    "loss": losses[reached].tolist()},
        "_plot": {"times": np.asarray(times), "data": data, "clean": np.asarray(clean),
                  "fit": np.asarray(jax.vmap(fitted)(conditions))},
    }
    if path_report is not None:
        summary["action"] = path_report
    return summary


def write_report(summary: dict, out: Path, output_names=()) -> None:
    """``summary.json``, ``fit.png`` (data, truth and fit) and ``loss.png``."""
    out.mkdir(parents=True, exist_ok=True)
    plot = summary.pop("_plot")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plt = pyplot()

    data, fit, clean, times = plot["data"], plot["fit"], plot["clean"], plot["times"]
    shown = min(len(data), 4)
    outputs = data.shape[-1]
    fig, axes = plt.subplots(outputs, shown, figsize=(3.2 * shown, 2.6 * outputs), squeeze=False)
    for c in range(shown):
        for k in range(outputs):
            ax = axes[k, c]
            ax.plot(times, data[c, :, k], ".", ms=3, color="0.5", label="noisy data")
            ax.plot(times, clean[c, :, k], "k--", lw=1, label="truth")
            ax.plot(times, fit[c, :, k], "C3", lw=1.5, label="fit")
            name = output_names[k] if k < len(output_names) else f"output {k}"
            ax.set_title(f"condition {c}: {name}", fontsize=9)
            if k == outputs - 1:
                ax.set_xlabel("time")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fit.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(summary["history"]["s"], summary["history"]["loss"], "C0.-")
    ax.axhline(summary["loss_at_truth"], color="k", ls="--", lw=1, label="loss at the truth")
    ax.set_xlabel("pseudo-time s")
    ax.set_ylabel("weighted least-squares loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
