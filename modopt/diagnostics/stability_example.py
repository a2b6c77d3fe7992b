"""`modopt run examples/stability.toml`: the stability experiment of Theorem 3 over a
grid of masses and sample counts, with a table, a JSON summary and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr

from .. import metrics
from .._module import mlp
from .._plotting import pyplot
from .stability import replace_one_sample

DEFAULTS = {"masses": [0.01, 0.1, 1.0, 10.0], "samples": [8, 16, 32], "inputs": 5,
            "width": 32, "s1": 10.0, "seed": 0, "noise": 0.1}


def regression_data(n: int, inputs: int, noise: float, seed: int):
    """``y = sin(x . w) + noise`` with Gaussian ``x`` (``n x inputs``) and fixed ``w``."""
    x = jr.normal(jr.PRNGKey(seed), (n, inputs))
    w = jnp.linspace(1.0, -0.5, inputs)
    y = jnp.sin(x @ w)[:, None] + noise * jr.normal(jr.PRNGKey(seed + 1), (n, 1))
    return x, y


def run_stability(config: dict, out: Path) -> dict:
    """Run the grid; write ``summary.json``, ``stability.md`` and ``stability.png``.

    **Returns:** the summary (one row per mass and sample count).
    """
    options = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    out.mkdir(parents=True, exist_ok=True)
    model = mlp([options["inputs"], options["width"], 1], key=jr.PRNGKey(options["seed"] + 7),
                activation=jnp.tanh)
    new_input = jr.normal(jr.PRNGKey(options["seed"] + 9), (options["inputs"],))
    rows = []
    for n in options["samples"]:
        x, y = regression_data(n, options["inputs"], options["noise"], options["seed"])
        for mass in options["masses"]:
            run = replace_one_sample(model, x, y, new_input, jnp.array([1.0]),
                                     output_metric=metrics.Identity(), mass=mass,
                                     s1=options["s1"])
            rows.append({"samples": n, "mass": mass, "max_difference": run["max_difference"],
                         "bound": run["bound"], "xi_min": float(run["xi"].min()),
                         "kappa_max": float(run["kappa"].max()),
                         "loss_gradient_bound": float(run["loss_gradient_bound"].max()),
                         "below_bound": run["max_difference"] <= run["bound"],
                         "converged": run["converged"]})
            print(f"n {n:3d}  mass {mass:8.3g}  max |y_S - y_S'| {run['max_difference']:.4f}"
                  f"  bound {run['bound']:.4g}  xi {rows[-1]['xi_min']:.3g}", flush=True)
    summary = {"options": options, "rows": rows,
               "all_below_bound": all(r["below_bound"] for r in rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| n | mass | max difference | bound | ratio | xi | kappa | L |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['samples']} | {r['mass']:g} | {r['max_difference']:.4f} | "
                     f"{r['bound']:.4g} | {r['max_difference'] / r['bound']:.2g} | "
                     f"{r['xi_min']:.3g} | {r['kappa_max']:.3g} | "
                     f"{r['loss_gradient_bound']:.3g} |")
    (out / "stability.md").write_text("\n".join(lines) + "\n")
    _plot(out / "stability.png", rows, options)
    return summary


def _plot(path: Path, rows: list, options: dict) -> None:
    plt = pyplot()

    fig, (by_mass, by_samples) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n in options["samples"]:
        mine = [r for r in rows if r["samples"] == n]
        masses = [r["mass"] for r in mine]
        line, = by_mass.loglog(masses, [r["max_difference"] for r in mine], "o-",
                               label=f"measured, n = {n}")
        by_mass.loglog(masses, [r["bound"] for r in mine], "s--", color=line.get_color(),
                       label=f"bound, n = {n}")
    for mass in options["masses"]:
        mine = [r for r in rows if r["mass"] == mass]
        counts = [r["samples"] for r in mine]
        line, = by_samples.loglog(counts, [r["max_difference"] for r in mine], "o-",
                                  label=f"measured, mass {mass:g}")
        by_samples.loglog(counts, [r["bound"] for r in mine], "s--",
                          color=line.get_color(), label=f"bound, mass {mass:g}")
    by_mass.set(xlabel="mass mu", ylabel="max over training of |y_S - y_S'|",
                title="one sample replaced: measured and bound")
    by_samples.set(xlabel="training samples n", title="scaling with n")
    for ax in (by_mass, by_samples):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
