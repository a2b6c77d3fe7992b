"""The biology examples run by ``modopt run examples/bio/*.toml``:

- ``morphogen``: a line of cells patterned by a morphogen (synthesis at one end,
  diffusion, degradation everywhere) and read out as a French flag. Diffusion,
  degradation and synthesis are recovered from noisy time courses; from steady-state data
  alone only their ratios are, and the example shows why (a flat direction of the loss).
- ``toggle_dose_response``: the Gardner 2000 toggle switch's six parameters recovered
  from a noisy IPTG dose-response measured from both stable states.

Each writes ``summary.json`` and PNG plots into its results folder, prints a short table
and returns the summary. Every fit minimises ``0.5 sum(((y - data) / sigma)^2)`` with the
output metric ``diag(1 / sigma^2)``, so the metric ``G`` is the Fisher information plus
the mass, and each estimate is judged by its Cramer-Rao standard error.
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
from ..flow import flow
from ..steps import AdaptiveMass, RiemannianSteps
from ..systems.recovery import noisy_data, start_parameters, weighted_jacobian
from .dose_response import TOGGLE_STARTS, dose_conditions, iptg_doses, toggle_dose_response
from .morphogen import (
    FATES,
    FRENCH_FLAG_THRESHOLDS,
    MORPHOGEN_NOMINAL,
    french_flag,
    morphogen_line,
    morphogen_steady_state,
)
from .toggle import TOGGLE_NOMINAL

FIT_DEFAULTS = {"method": "steps", "mass": 1e-3, "initial_mass_scale": 1.0,
                "min_mass_scale": 1e-6, "gtol": 1e-8, "max_steps": 200, "s1": 40.0}

MORPHOGEN_DEFAULTS = {
    "n_cells": 12, "observed": None, "parameters": MORPHOGEN_NOMINAL,
    "times": {"start": 2.0, "stop": 40.0, "num": 20},
    "noise": 0.05, "noise_floor": 0.01, "seed": 0, "start_offset": 0.5,
    "thresholds": list(FRENCH_FLAG_THRESHOLDS), "steady_state_starts": [0.5, 1.0, 2.0],
    "scan": {"low": 0.3, "high": 3.0, "num": 41},
    "rtol": 1e-8, "atol": 1e-10, **FIT_DEFAULTS,
}

TOGGLE_DOSE_DEFAULTS = {
    "time": 10.0, "doses": {"low": 1e-6, "high": 1e-3, "num": 24, "zero": True},
    "noise": 0.05, "noise_floor": 0.01, "seed": 0, "start_offset": 0.5, "starts": 4,
    "accept_level": 0.999, "rtol": 1e-8, "atol": 1e-8, "curve_points": 61,
    "profile": {"low": 0.2, "high": 1000.0, "num": 24},
    **FIT_DEFAULTS, "mass": 1.0, "initial_mass_scale": 1e3, "min_mass_scale": 1.0,
    "max_steps": 200,
}


# ----------------------------------------------------------------------------- helpers


def _options(defaults: dict, config: dict) -> dict:
    """`defaults` updated by `config`, one level deep for tables (``times``, ``scan``)."""
    options = dict(defaults)
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            options[key] = {**defaults[key], **value}
        else:
            options[key] = value
    return options


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = _plt()
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


# ----------------------------------------------------------------------------- morphogen


def _pattern_time(times, fates) -> float:
    """The first time after which every cell keeps its final fate (``nan`` if never)."""
    settled = np.all(fates == fates[-1], axis=1)
    unsettled = np.nonzero(~settled)[0]
    if unsettled.size == 0:
        return float(times[0])
    return float(times[unsettled[-1] + 1]) if unsettled[-1] + 1 < len(times) else float("nan")


def run_morphogen(config: dict, out: Path) -> dict:
    """The morphogen example: recovery from time courses, the steady-state ratios, the
    identifiability analysis and the French flag.

    **Arguments:**

    - `config`: options (missing ones take `MORPHOGEN_DEFAULTS`): ``n_cells``,
      ``observed`` (cell indices, default all), ``parameters`` (the truth), ``times``
      (``start``, ``stop``, ``num``), ``noise``, ``noise_floor``, ``seed``,
      ``start_offset``, ``steady_state_starts`` (multiples of the start for the
      steady-state fits), ``thresholds``, ``scan`` (``low``, ``high``, ``num``), ``rtol``,
      ``atol`` and the options of `fit_parameters` (``method``, ``mass``,
      ``initial_mass_scale``, ``min_mass_scale``, ``gtol``, ``max_steps``, ``s1``).
    - `out`: the results folder.

    **Returns:** the summary written to ``out/summary.json``; plots ``fit.png``,
    ``identifiability.png``, ``french_flag.png`` and ``loss.png``.
    """
    jax.config.update("jax_enable_x64", True)
    o = _options(MORPHOGEN_DEFAULTS, config)
    truth = {name: float(value) for name, value in o["parameters"].items()}
    n, observed = int(o["n_cells"]), o["observed"]
    times = np.linspace(o["times"]["start"], o["times"]["stop"], int(o["times"]["num"]))
    ode = {"rtol": o["rtol"], "atol": o["atol"]}
    fit_options = {key: o[key] for key in FIT_DEFAULTS}
    conditions = jnp.ones((1, 1))
    began = time.perf_counter()

    def line(params, ts=times, cells=observed):
        return morphogen_line(ts, params, n_cells=n, observed=cells, **ode)

    def steady(params, cells=observed):
        return morphogen_steady_state(params, n_cells=n, observed=cells)

    clean = np.asarray(evaluate(line(truth), conditions))
    data, sigma = noisy_data(clean, o["noise"], o["noise_floor"], o["seed"])
    ss_clean = np.asarray(evaluate(steady(truth), conditions))
    ss_data, ss_sigma = noisy_data(ss_clean, o["noise"], o["noise_floor"], o["seed"] + 1)
    start = start_parameters(truth, o["start_offset"], o["seed"])

    # (1) Time courses: all three rates.
    fitted, fit_info = fit_parameters(line(start), conditions, data, sigma, **fit_options)
    names, jac = weighted_jacobian(fitted, conditions, sigma)
    errors = fisher_summary(names, jac)["standard_errors"]
    estimate = _linear(fitted)
    rows = _rows(truth, start, estimate, errors)

    # (2) Steady state only, from the start scaled by each of `steady_state_starts`: each
    # fit ends on the line of true ratios, at a point that its start decides.
    ss_fits = []
    for factor in o["steady_state_starts"]:
        scaled = {name: factor * value for name, value in start.items()}
        ss_fitted, ss_info = fit_parameters(steady(scaled), conditions, ss_data, ss_sigma,
                                            **fit_options)
        ss_fits.append(_steady_state_fit(truth, scaled, factor, ss_fitted, ss_info,
                                         conditions, ss_sigma))
    ss_estimate = ss_fits[-1]["estimates"]

    # (3) Identifiability at the truth, and the loss along (aD, ak, as).
    fisher_tc = fisher_summary(*weighted_jacobian(line(truth), conditions, sigma))
    fisher_ss = fisher_summary(*weighted_jacobian(steady(truth), conditions, ss_sigma))
    factors = _scan_factors(o["scan"]["low"], o["scan"]["high"], o["scan"]["num"])
    scan_tc = scaling_scan(line(truth), conditions, data, sigma, factors)
    scan_ss = scaling_scan(steady(truth), conditions, ss_data, ss_sigma, factors)
    at_one = int(np.argmin(np.abs(factors - 1.0)))

    # (4) The French flag from each parameter set, and when it forms.
    thresholds = tuple(o["thresholds"])
    sets = {"truth": truth, "time-course fit": estimate,
            f"steady-state fit (start x{o['steady_state_starts'][-1]:g})": ss_estimate}
    dense = np.linspace(0.0, 1.5 * times[-1], 121)[1:]
    profiles, kymographs, flags, pattern_times = {}, {}, {}, {}
    for label, params in sets.items():
        profiles[label] = np.asarray(evaluate(steady(params, cells=None), conditions))[0]
        flags[label] = np.asarray(french_flag(profiles[label], thresholds))
        course = np.asarray(evaluate(line(params, ts=dense, cells=None), conditions))[0]
        kymographs[label] = np.asarray(french_flag(course, thresholds))
        pattern_times[label] = _pattern_time(dense, kymographs[label])

    summary = {
        "example": "morphogen", "n_cells": n,
        "observed_cells": list(range(n)) if observed is None else list(observed),
        "times": times.tolist(), "noise": o["noise"], "noise_floor": o["noise_floor"],
        "seed": o["seed"], "start_offset": o["start_offset"],
        "time_course_fit": {**{k: v for k, v in fit_info.items() if k != "history"},
                            "num_data": int(data.size),
                            "loss_at_truth": float(scan_tc[at_one]),
                            "parameters": rows,
                            "max_abs_z": max(abs(r["z_score"]) for r in rows.values())},
        "steady_state_fits": [{k: v for k, v in f.items() if k != "history"}
                              for f in ss_fits],
        "max_abs_z_ratios": max(abs(r["z_score"]) for f in ss_fits
                                for r in f["ratios"].values()),
        "steady_state_loss_at_truth": float(scan_ss[at_one]),
        "identifiability": {
            "time_course_fisher": fisher_tc, "steady_state_fisher": fisher_ss,
            "scan": {"factors": factors.tolist(), "time_course_loss": scan_tc.tolist(),
                     "steady_state_loss": scan_ss.tolist()},
            "steady_state_loss_max_relative_change":
                float(np.max(np.abs(scan_ss - scan_ss[at_one])) / scan_ss[at_one]),
            "time_course_loss_rise": {"low": float(scan_tc[0] - scan_tc[at_one]),
                                      "high": float(scan_tc[-1] - scan_tc[at_one])},
            "time_course_argmin_factor": float(factors[np.argmin(scan_tc)]),
        },
        "french_flag": {"thresholds": list(thresholds), "fates": list(FATES),
                        "steady_state": {k: v.tolist() for k, v in flags.items()},
                        "pattern_time": pattern_times},
        "wall_time_s": time.perf_counter() - began,
    }
    _write_json(out, summary)
    smooth = np.linspace(0.0, times[-1], 101)[1:]
    _plot_morphogen_fit(out, times, data[0], sigma[0], smooth,
                        np.asarray(evaluate(line(truth, ts=smooth), conditions))[0],
                        np.asarray(evaluate(line(estimate, ts=smooth), conditions))[0],
                        summary["observed_cells"])
    _plot_identifiability(out, truth, n, observed, ss_data[0], times, factors, scan_tc,
                          scan_ss, line, steady, summary)
    _plot_french_flag(out, profiles, flags, kymographs, dense, thresholds)
    _plot_losses(out, {"time courses": fit_info,
                       **{f"steady state, start x{f['start_factor']:g}": f
                          for f in ss_fits}})

    print(f"morphogen, {n} cells: time courses ({data.size} data), {fit_info['method']}, "
          f"{fit_info['num_steps']} steps, {fit_info['wall_time_s']:.1f} s")
    _print_rows(rows)
    for f in ss_fits:
        print(f"steady state only ({ss_data.size} data), start x{f['start_factor']:g}: "
              "D, k, s off by " + ", ".join(f"{100 * r['relative_error']:+.1f} %"
                                            for r in f["individual"].values()))
        _print_rows(f["ratios"])
    print(f"Fisher singular values min/max: time courses {fisher_tc['ratio']:.3g}, "
          f"steady state {fisher_ss['ratio']:.3g}; steady-state loss along (aD, ak, as), "
          f"a in [{factors[0]:.2g}, {factors[-1]:.2g}]: relative change "
          f"{summary['identifiability']['steady_state_loss_max_relative_change']:.2g}")
    return summary


def _steady_state_fit(truth, start, factor, fitted, info, conditions, sigma) -> dict:
    """One steady-state fit: every rate against the truth, and the two ratios with the
    standard errors of the steady state's rank-2 Fisher information."""
    estimate = _linear(fitted)
    names, jac = weighted_jacobian(fitted, conditions, sigma)
    # Holding log k, log(D/k) moves with log D and log(s/k) with log s: the Fisher
    # information of the ratios is that of the columns D and s.
    columns = [names.index("D"), names.index("s")]
    covariance = np.linalg.inv(jac[:, columns].T @ jac[:, columns])
    ratios = {}
    for i, name in enumerate(("D", "s")):
        true_ratio, ratio = truth[name] / truth["k"], estimate[name] / estimate["k"]
        se = float(np.sqrt(covariance[i, i]))
        ratios[f"{name}/k"] = {
            "truth": true_ratio, "start": start[name] / start["k"], "estimate": ratio,
            "relative_error": ratio / true_ratio - 1, "standard_error": se,
            "z_score": float(np.log(ratio / true_ratio) / se),
        }
    return {
        "start_factor": factor, **info, "estimates": estimate,
        "individual": {name: {"truth": truth[name], "start": start[name],
                              "estimate": estimate[name],
                              "relative_error": estimate[name] / truth[name] - 1}
                       for name in truth},
        "ratios": ratios,
        "log_rate_sum": {label: float(sum(np.log(p[name]) for name in truth))
                         for label, p in (("start", start), ("fit", estimate),
                                          ("truth", truth))},
    }


def _plot_morphogen_fit(out, times, data, sigma, smooth, clean, fit, cells) -> None:
    plt = _plt()
    shown = np.unique(np.linspace(0, len(cells) - 1, min(len(cells), 6)).round().astype(int))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for j, column in enumerate(shown):
        color = f"C{j}"
        ax.errorbar(times, data[:, column], sigma[:, column], fmt=".", ms=4, color=color,
                    alpha=0.6, lw=0.8)
        ax.plot(smooth, clean[:, column], "--", color=color, lw=1)
        ax.plot(smooth, fit[:, column], "-", color=color, lw=1.5,
                label=f"cell {cells[column]}")
    ax.plot([], [], "k.", label="noisy data")
    ax.plot([], [], "k--", label="truth")
    ax.plot([], [], "k-", label="fit")
    ax.set_xlabel("time (h)")
    ax.set_ylabel("morphogen concentration")
    ax.set_title("recovery from time courses")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "fit.png", dpi=110)
    plt.close(fig)


def _null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _plain_log_ticks(ax, ticks) -> None:
    """Label a log x-axis at `ticks` only, in plain numbers."""
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(_null_formatter())


def _plot_identifiability(out, truth, n, observed, ss_data, times, factors, scan_tc, scan_ss,
                          line, steady, summary) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    cells = np.arange(n) if observed is None else np.asarray(observed)
    dense = np.linspace(0.0, times[-1], 161)[1:]
    one = jnp.ones((1, 1))
    for j, a in enumerate((0.3, 1.0, 3.0)):
        scaled = {k: a * v for k, v in truth.items()}
        profile = np.asarray(evaluate(steady(scaled, cells=None), one))[0]
        axes[0].plot(np.arange(n), profile, ("o-", "s--", "^:")[j], color=f"C{j}",
                     lw=3 - j, ms=7 - 2 * j, label=f"a = {a:g}")
        course = np.asarray(evaluate(line(scaled, ts=dense, cells=[0, n // 3]), one))[0]
        axes[1].plot(dense, course[:, 0], "-", color=f"C{j}", label=f"cell 0, a = {a:g}")
        axes[1].plot(dense, course[:, 1], ":", color=f"C{j}", label=f"cell {n // 3}, a = {a:g}")
    axes[0].plot(cells, ss_data, "kx", label="steady-state data")
    axes[0].set_xlabel("cell")
    axes[0].set_ylabel("steady-state concentration")
    axes[0].set_title("steady state: (aD, ak, as) all give one profile", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("time (h)")
    axes[1].set_ylabel("concentration")
    axes[1].set_title("time courses: a sets the time scale 1/(ak)", fontsize=9)
    axes[1].legend(fontsize=6, ncol=2)
    at_one = int(np.argmin(np.abs(factors - 1.0)))
    ident = summary["identifiability"]
    axes[2].semilogx(factors, scan_tc - scan_tc[at_one], "C3.-",
                     label=f"time courses (Fisher sv ratio "
                           f"{ident['time_course_fisher']['ratio']:.2g})")
    axes[2].semilogx(factors, scan_ss - scan_ss[at_one], "C0.-",
                     label=f"steady state (sv ratio "
                           f"{ident['steady_state_fisher']['ratio']:.1g}; max relative change "
                           f"{ident['steady_state_loss_max_relative_change']:.1g})")
    axes[2].set_yscale("symlog", linthresh=1.0)
    _plain_log_ticks(axes[2], [0.3, 0.5, 1, 2, 3])
    axes[2].set_xlabel("a: rates (aD, ak, as)")
    axes[2].set_ylabel("loss(a) - loss(1)")
    axes[2].set_title("loss along the scaling direction", fontsize=9)
    axes[2].legend(fontsize=7)
    fits = summary["steady_state_fits"]
    starts = [f["start_factor"] for f in fits]
    for j, name in enumerate(truth):
        axes[3].plot(starts, [f["individual"][name]["estimate"] / truth[name] for f in fits],
                     "o-", color=f"C{j}", label=name)
    for j, name in enumerate(fits[0]["ratios"]):
        axes[3].plot(starts, [f["ratios"][name]["estimate"] / f["ratios"][name]["truth"]
                              for f in fits], "s--", color=f"C{j + 3}", ms=8, label=name)
    axes[3].set_xscale("log")
    axes[3].set_yscale("log")
    _plain_log_ticks(axes[3], starts)
    axes[3].set_yticks([0.5, 1, 2], ["0.5", "1", "2"])
    axes[3].yaxis.set_minor_formatter(_null_formatter())
    axes[3].set_xlabel("start of the steady-state fit (times the first start)")
    axes[3].set_ylabel("estimate / truth")
    axes[3].set_title("steady-state fits: ratios right, rates wherever they start", fontsize=9)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "identifiability.png", dpi=110)
    plt.close(fig)


def _plot_french_flag(out, profiles, flags, kymographs, dense, thresholds) -> None:
    plt = _plt()
    from matplotlib.colors import ListedColormap

    colours = ListedColormap(["#0055a4", "#f4f4f4", "#ef4135"])
    labels = list(flags)
    fig, axes = plt.subplots(2, len(labels), figsize=(4.2 * len(labels), 6),
                             gridspec_kw={"height_ratios": [1, 2]})
    for j, label in enumerate(labels):
        ax = axes[0, j]
        n = len(profiles[label])
        ax.imshow(flags[label][None, :], cmap=colours, vmin=0, vmax=2, aspect="auto",
                  interpolation="nearest",
                  extent=(-0.5, n - 0.5, 0, max(profiles[label].max(), thresholds[0]) * 1.1))
        ax.plot(np.arange(n), profiles[label], "k.-")
        for level in thresholds:
            ax.axhline(level, color="0.3", ls=":", lw=1)
        ax.set_title(f"{label}: steady state", fontsize=9)
        ax.set_xlabel("cell")
        ax = axes[1, j]
        ax.imshow(kymographs[label], cmap=colours, vmin=0, vmax=2, aspect="auto",
                  origin="lower", interpolation="nearest",
                  extent=(-0.5, n - 0.5, dense[0], dense[-1]))
        ax.set_xlabel("cell")
        ax.set_ylabel("time (h)")
        ax.set_title(f"{label}: fates over time", fontsize=9)
    axes[0, 0].set_ylabel("concentration")
    fig.tight_layout()
    fig.savefig(out / "french_flag.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- toggle


def sign_starts(truth: dict, offset: float, count: int, seed: int) -> list[dict]:
    """`count` starts, each parameter times ``1 + offset`` or ``1 - offset``, with distinct
    random sign patterns (at most ``2^len(truth)``)."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(2 ** len(truth), size=min(int(count), 2 ** len(truth)), replace=False)
    return [{name: value * (1 + offset * (1 if (code >> i) & 1 else -1))
             for i, (name, value) in enumerate(truth.items())} for code in codes]


def run_toggle_dose_response(config: dict, out: Path) -> dict:
    """The toggle-switch example: all six parameters from a noisy IPTG dose-response read
    at one time from both stable states, and the Fisher information of four designs
    (both initial states, each alone, and both with every other dose).

    The loss of a bistable switch's dose-response is rough: a start whose switching
    threshold lies between other doses than the truth's sits on a plateau or in a local
    minimum (one where ``a1`` and ``a2`` collapse). So the fit is run from ``starts``
    starts (distinct sign patterns of ``1 +- start_offset``), the converged fit of lowest
    loss is kept, and it is checked by the chi-square test of fit
    (``2 loss <= chi2.ppf(accept_level, data - parameters)``; ``accepted`` in the summary).
    A shallower minimum lies at infinity: as ``K`` and ``eta`` grow together,
    ``(1 + IPTG/K)^eta`` tends to ``exp(IPTG eta/K)``, and a fit can run off there with a
    loss that passes the test; the profile of the loss in ``K`` (``profile_K``, the other
    five refitted at each ``K``) shows it.

    **Arguments:**

    - `config`: options (missing ones take `TOGGLE_DOSE_DEFAULTS`): ``time`` (the
      read-out time), ``doses`` (``low``, ``high``, ``num``, ``zero``), ``noise``,
      ``noise_floor``, ``seed``, ``start_offset``, ``starts``, ``accept_level``,
      ``profile`` (``low``, ``high``: the range of ``K / estimate``; ``num``: points, 0
      for none), ``rtol``, ``atol``, ``curve_points`` (doses of the plotted curves) and
      the options of `fit_parameters` (``method``, ``mass``, ``initial_mass_scale``,
      ``min_mass_scale``, ``gtol``, ``max_steps``, ``s1``).
    - `out`: the results folder.

    **Returns:** the summary written to ``out/summary.json``; plots
    ``dose_response.png``, ``identifiability.png`` and ``loss.png``.
    """
    from scipy.stats import chi2

    jax.config.update("jax_enable_x64", True)
    o = _options(TOGGLE_DOSE_DEFAULTS, config)
    d = o["doses"]
    doses = iptg_doses(d["low"], d["high"], int(d["num"]), bool(d["zero"]))
    initial_states = list(TOGGLE_STARTS.values())
    conditions = dose_conditions(doses, initial_states)
    truth = dict(TOGGLE_NOMINAL)
    ode = {"time": o["time"], "rtol": o["rtol"], "atol": o["atol"]}
    began = time.perf_counter()

    clean = np.asarray(evaluate(toggle_dose_response(truth, **ode), jnp.asarray(conditions)))
    data, sigma = noisy_data(clean, o["noise"], o["noise_floor"], o["seed"])
    bound = float(chi2.ppf(o["accept_level"], data.size - len(truth)) / 2)
    fits = []
    for start in sign_starts(truth, o["start_offset"], o["starts"], o["seed"]):
        fitted, info = fit_parameters(toggle_dose_response(start, **ode), conditions, data,
                                      sigma, **{key: o[key] for key in FIT_DEFAULTS})
        fits.append((fitted, info, start))
    # the lowest converged loss (the lowest of all if none converged: flagged below)
    candidates = [f for f in fits if f[1]["converged"]] or fits
    best = min(candidates, key=lambda f: f[1]["loss"])
    infos = [f[1] for f in fits]
    attempts = [{"start": f[2], **{k: v for k, v in f[1].items() if k != "history"}}
                for f in fits]
    fitted, info, start = best
    for a in attempts:
        a["at_best"] = bool(a["converged"] and a["loss"] - info["loss"] < 1e-2)
    names, jac = weighted_jacobian(fitted, conditions, sigma)
    estimate = _linear(fitted)
    rows = _rows(truth, start, estimate, fisher_summary(names, jac)["standard_errors"])
    # (1 + IPTG/K)^eta ~ 1 + (eta/K) IPTG at low doses: the slope is better determined
    # than K and eta themselves.
    covariance = np.linalg.inv(jac.T @ jac)
    direction = np.array([{"eta": 1.0, "K": -1.0}.get(n, 0.0) for n in names])
    se = float(np.sqrt(direction @ covariance @ direction))
    slope, true_slope = estimate["eta"] / estimate["K"], truth["eta"] / truth["K"]
    combinations = {"eta/K": {"truth": true_slope, "estimate": slope,
                              "relative_error": slope / true_slope - 1, "standard_error": se,
                              "z_score": float(np.log(slope / true_slope) / se)}}
    # The weak pair beyond the quadratic (Cramer-Rao) picture: the profile of the loss in
    # K, the other five refitted at each K.
    grid, profile = o["profile"], None
    if int(grid["num"]) > 0:
        factors = _scan_factors(grid["low"], grid["high"], grid["num"])
        profile = profile_loss(fitted, "K", factors, conditions, data, sigma,
                               **{key: o[key] for key in FIT_DEFAULTS})
        profile["interval_95"] = _profile_interval(profile, info["loss"], 1.92)

    # The Fisher information at the truth (expected noise), by design: rows are
    # (start, dose, output) in that order.
    expected_sigma = o["noise"] * np.abs(clean) + o["noise_floor"]
    names, jac_truth = weighted_jacobian(toggle_dose_response(truth, **ode), conditions,
                                         expected_sigma)
    index = np.arange(jac_truth.shape[0]).reshape(len(initial_states), len(doses), 2)
    designs = {"both initial states": index}
    for i, label in enumerate(TOGGLE_STARTS):
        designs[f"{label} initial state only"] = index[i:i + 1]
    designs["both, every other dose"] = index[:, ::2]
    fisher = {label: {"num_doses": int(selection.shape[1]),
                      "initial_states": int(selection.shape[0]),
                      **fisher_summary(names, jac_truth[selection.reshape(-1)])}
              for label, selection in designs.items()}
    loss_at_truth = float(0.5 * np.sum(((clean - data) / sigma) ** 2))
    curve = np.geomspace(d["low"], d["high"], int(o["curve_points"]))
    curve = np.concatenate([[0.0], curve]) if d["zero"] else curve
    curve_conditions = jnp.asarray(dose_conditions(curve, initial_states))
    curves = {label: np.asarray(evaluate(toggle_dose_response(params, **ode),
                                         curve_conditions))
              for label, params in (("truth", truth), ("fit", estimate))}

    summary = {
        "example": "toggle_dose_response", "time": o["time"], "doses": doses.tolist(),
        "initial_states": TOGGLE_STARTS, "noise": o["noise"],
        "noise_floor": o["noise_floor"], "seed": o["seed"], "start_offset": o["start_offset"],
        "num_data": int(data.size), **{k: v for k, v in info.items() if k != "history"},
        "accepted": bool(info["converged"] and info["loss"] <= bound),
        "accept_loss_bound": bound,
        "starts_at_best": sum(a["at_best"] for a in attempts),
        "attempts": attempts, "loss_at_truth": loss_at_truth,
        "parameters": rows, "max_abs_z": max(abs(r["z_score"]) for r in rows.values()),
        "combinations": combinations, "fisher": fisher,
        "profile_K": profile, "wall_time_s_total": time.perf_counter() - began,
    }
    _write_json(out, summary)
    _plot_dose_response(out, doses, data, sigma, curve, curves, len(initial_states),
                        o["time"])
    _plot_toggle_fisher(out, names, fisher, profile, estimate["K"], info["loss"],
                        rows["K"]["standard_error"])
    _plot_losses(out, {f"start {i}": a for i, a in enumerate(infos)})

    print(f"toggle dose-response: {len(doses)} doses x {len(initial_states)} initial states "
          f"x (u, v) = {data.size} data at t = {o['time']:g}")
    for i, a in enumerate(attempts):
        print(f"  start {i}: {a['method']}, {a['num_steps']} steps, {a['wall_time_s']:.1f} s, "
              f"loss {a['loss']:.4g}{' (best)' if a['at_best'] else ''}")
    print(f"  kept the best: {'passes' if summary['accepted'] else 'FAILS'} the chi-square "
          f"test of fit (loss <= {bound:.4g})")
    _print_rows(rows)
    _print_rows(combinations)
    for label, f in fisher.items():
        errors = f["standard_errors"] or {}
        print(f"{label:>28}: Fisher singular values min/max {f['ratio']:.2g}; standard "
              "errors " + ", ".join(f"{n} {100 * e:.0f} %" for n, e in errors.items()))
    return summary


def _plot_dose_response(out, doses, data, sigma, curve, curves, n_states, time) -> None:
    plt = _plt()
    zero_at = doses[doses > 0].min() / 4  # where the zero dose is drawn on the log axis
    on_axis = curve > 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    data = data.reshape(n_states, len(doses), 2)
    sigma = sigma.reshape(n_states, len(doses), 2)
    x = np.where(doses > 0, doses, zero_at)
    for s, label in enumerate(TOGGLE_STARTS):
        color = f"C{s}"
        truth = curves["truth"].reshape(n_states, len(curve), 2)[s]
        fit = curves["fit"].reshape(n_states, len(curve), 2)[s]
        for k in range(2):
            ax = axes[k]
            ax.errorbar(x, data[s, :, k], sigma[s, :, k], fmt="o", ms=3, color=color,
                        alpha=0.7, label=f"data, {label} initial state")
            ax.plot(curve[on_axis], truth[on_axis, k], "--", color="k" if s == 0 else "0.45",
                    lw=1, label=f"truth, {label} initial state")
            ax.plot(curve[on_axis], fit[on_axis, k], "-", color=color, lw=1.5,
                    label=f"fit, {label} initial state")
            if not on_axis.all():
                ax.plot([zero_at], truth[~on_axis, k], "_", color="k", ms=14)
                ax.plot([zero_at], fit[~on_axis, k], "_", color=color, ms=10, mew=2)
    for k, name in enumerate(("u", "v")):
        ax = axes[k]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(zero_at * 2, color="0.7", lw=0.8)
        ax.set_xlabel("IPTG (M); left of the grey line: no IPTG")
        ax.set_ylabel(f"{name} at t = {time:g}")
        ax.set_title(f"repressor {name}: dose-response from both stable states", fontsize=9)
    axes[0].legend(fontsize=7, loc="center left")
    fig.tight_layout()
    fig.savefig(out / "dose_response.png", dpi=110)
    plt.close(fig)


def _plot_toggle_fisher(out, names, fisher, profile, k_hat, loss, se_k) -> None:
    plt = _plt()
    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 4.8),
                                    gridspec_kw={"width_ratios": [1.4, 1]})
    width = 0.8 / len(fisher)
    for i, (label, f) in enumerate(fisher.items()):
        errors = [f["standard_errors"][n] if f["standard_errors"] else np.nan for n in names]
        ax.bar(np.arange(len(names)) + (i - (len(fisher) - 1) / 2) * width, errors, width,
               label=f"{label} ({f['num_doses']} doses; singular value ratio "
                     f"{f['ratio']:.1g})")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("Cramer-Rao standard error of log(parameter)")
    ax.set_title("what each design of the dose-response identifies", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    if profile is None:
        right.set_axis_off()
        fig.savefig(out / "identifiability.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return
    ratio = np.asarray(profile["values"]) / k_hat
    right.semilogx(ratio, np.asarray(profile["losses"]) - loss, "C0.-",
                   label="profile: the other five refitted")
    fine = np.geomspace(ratio.min(), ratio.max(), 200)
    right.semilogx(fine, np.log(fine) ** 2 / (2 * se_k**2), "k--", lw=1,
                   label=f"quadratic, Cramer-Rao se {100 * se_k:.0f} %")
    right.axhline(1.92, color="0.5", ls=":", lw=1, label="1.92: 95 % for one parameter")
    top = 1.5 * max(np.max(np.asarray(profile["losses"]) - loss), 1.92)
    right.set_ylim(-0.05 * top, top)
    right.set_xlabel("K / estimate")
    right.set_ylabel("loss - loss at the estimate")
    right.set_title("K's profile: not quadratic, it levels off as K grows", fontsize=9)
    right.legend(fontsize=7)
    fig.savefig(out / "identifiability.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
