"""The ``toggle_dose_response`` example run by
``modopt run examples/bio/toggle_dose_response.toml``: the Gardner 2000 toggle switch's
six parameters recovered from a noisy IPTG dose-response measured from both stable
states.

It writes ``summary.json`` and PNG plots into its results folder, prints a short table
and returns the summary. The fits are those of `example_fitting`.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._plotting import pyplot
from ..systems.recovery import noisy_data, weighted_jacobian
from .dose_response import TOGGLE_STARTS, dose_conditions, iptg_doses, toggle_dose_response
from .example_fitting import (
    FIT_DEFAULTS,
    _linear,
    _options,
    _plot_losses,
    _print_rows,
    _profile_interval,
    _rows,
    _scan_factors,
    _write_json,
    evaluate,
    fisher_summary,
    fit_parameters,
    profile_loss,
)
from .toggle import TOGGLE_NOMINAL

TOGGLE_DOSE_DEFAULTS = {
    "time": 10.0, "doses": {"low": 1e-6, "high": 1e-3, "num": 24, "zero": True},
    "noise": 0.05, "noise_floor": 0.01, "seed": 0, "start_offset": 0.5, "starts": 4,
    "accept_level": 0.999, "rtol": 1e-8, "atol": 1e-8, "curve_points": 61,
    "profile": {"low": 0.2, "high": 1000.0, "num": 24},
    **FIT_DEFAULTS, "mass": 1.0, "initial_mass_scale": 1e3, "min_mass_scale": 1.0,
    "max_steps": 200,
}


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
    plt = pyplot()
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
    plt = pyplot()
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
