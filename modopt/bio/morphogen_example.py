"""The ``morphogen`` example run by ``modopt run examples/bio/morphogen.toml``: a line of
cells patterned by a morphogen (synthesis at one end, diffusion, degradation everywhere)
and read out as a French flag. Diffusion, degradation and synthesis are recovered from
noisy time courses; from steady-state data alone only their ratios are, and the example
shows why (a flat direction of the loss).

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
from ..systems.recovery import noisy_data, start_parameters, weighted_jacobian
from .example_fitting import (
    FIT_DEFAULTS,
    _linear,
    _options,
    _plot_losses,
    _print_rows,
    _rows,
    _scan_factors,
    _write_json,
    evaluate,
    fisher_summary,
    fit_parameters,
    scaling_scan,
)
from .morphogen import (
    FATES,
    FRENCH_FLAG_THRESHOLDS,
    MORPHOGEN_NOMINAL,
    french_flag,
    morphogen_line,
    morphogen_steady_state,
)

MORPHOGEN_DEFAULTS = {
    "n_cells": 12, "observed": None, "parameters": MORPHOGEN_NOMINAL,
    "times": {"start": 2.0, "stop": 40.0, "num": 20},
    "noise": 0.05, "noise_floor": 0.01, "seed": 0, "start_offset": 0.5,
    "thresholds": list(FRENCH_FLAG_THRESHOLDS), "steady_state_starts": [0.5, 1.0, 2.0],
    "scan": {"low": 0.3, "high": 3.0, "num": 41},
    "rtol": 1e-8, "atol": 1e-10, **FIT_DEFAULTS,
}


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
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
