"""K of an ODE module by forward against reverse mode, and what AutoJacobian picks.

The module: ``x' = -x + tanh(U (theta * (V x))) + sin(t) e_1`` with 8 states and
``P`` parameters ``theta`` (``U``: 8 x P, ``V``: P x 8 fixed), observed at ``T`` times, so
``obs = 8 T`` outputs for one sample. One call of `modopt.riemannian_direction` (loss,
gradient, ``K`` and the block solve, Identity metric) is timed with
``jacobian=Forward()``, ``Reverse()`` and the default ``AutoJacobian()``, jitted,
after a warm-up call (compilation is reported apart); the three are then timed in
turn, round-robin, and the median of the repeats is reported.

Goal: AutoJacobian within 1.2x of the better of forward and reverse for every shape,
parameters 5 to 200 and observations 50 to 5,000.

Run from the repository root: ``.venv/bin/python benchmarks/bench_ode_jacobian.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    command_line,
    configure_threads,
    machine_info,
    markdown_table,
    time_jitted,
    write_results,
)

PARSER = argparse.ArgumentParser()
PARSER.add_argument("--params", type=int, nargs="+", default=[5, 20, 50, 200])
PARSER.add_argument("--obs", type=int, nargs="+", default=[48, 496, 5000])
PARSER.add_argument("--repeats", type=int, default=21)
PARSER.add_argument("--threads", type=int, default=1)
ARGS = PARSER.parse_args()
configure_threads(ARGS.threads or None)

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

import modopt  # noqa: E402
from modopt.systems import ODEModule  # noqa: E402

STATES = 8


def build(num_params: int, num_obs: int):
    rng = np.random.default_rng(num_params)
    u = jnp.asarray(rng.standard_normal((STATES, num_params)) / np.sqrt(num_params))
    v = jnp.asarray(rng.standard_normal((num_params, STATES)))

    def field(t, x, cond, p):
        drive = jnp.zeros(STATES).at[0].set(jnp.sin(t))
        return -x + jnp.tanh(u @ (p["theta"] * (v @ x))) + drive

    times = np.linspace(0.05, 5.0, num_obs // STATES)
    theta = jnp.asarray(1.0 + 0.1 * rng.standard_normal(num_params))
    module = ODEModule(field, {"theta": theta}, np.full(STATES, 0.1), times, rtol=1e-6, atol=1e-8)
    targets = jax.vmap(module)(jnp.zeros((1, 1))) * 1.1
    return module, targets


def main():
    rows, table = [], []
    strategies = {"forward": modopt.Forward(), "reverse": modopt.Reverse(),
                  "auto": modopt.AutoJacobian()}
    for num_obs in ARGS.obs:
        for num_params in ARGS.params:
            module, targets = build(num_params, num_obs)
            obs = int(targets.size)
            calls, times = {}, {}
            for name, strategy in strategies.items():
                @eqx.filter_jit
                def direction(m, y, strategy=strategy):
                    return modopt.riemannian_direction(
                        m, modopt.losses.squared_error, jnp.zeros((1, 1)), y,
                        output_metric=modopt.metrics.Identity(), mass=1e-3, jacobian=strategy,
                    ).direction

                calls[name] = direction
                times[name] = time_jitted(direction, module, targets, repeats=1)
                times[name]["all"] = []
            # Interleaved repeats: load from other processes hits all three alike.
            for _ in range(ARGS.repeats):
                for name, call in calls.items():
                    began = time.perf_counter()
                    jax.block_until_ready(call(module, targets))
                    times[name]["all"].append(time.perf_counter() - began)
            for t in times.values():
                t["median_s"] = float(np.median(t["all"]))
            best = min(times["forward"]["median_s"], times["reverse"]["median_s"])
            ratio = times["auto"]["median_s"] / best
            rows.append(dict(
                num_params=num_params, num_obs=obs,
                **{f"{k}_median_s": t["median_s"] for k, t in times.items()},
                **{f"{k}_compile_s": t["compile_s"] for k, t in times.items()},
                **{f"{k}_all_s": t["all"] for k, t in times.items()},
                auto_over_best=ratio,
            ))
            table.append([num_params, obs, f"{1e3 * times['forward']['median_s']:.1f}",
                          f"{1e3 * times['reverse']['median_s']:.1f}",
                          f"{1e3 * times['auto']['median_s']:.1f}", f"{ratio:.2f}",
                          "yes" if ratio <= 1.2 else "**no**"])
            print(table[-1], flush=True)
    worst = max(r["auto_over_best"] for r in rows)
    md = "\n".join([
        "# K of an ODE module: forward vs reverse mode, and AutoJacobian's choice",
        "",
        f"Command: `{command_line()}`",
        "",
        "One jitted `riemannian_direction` call (ms, median after warm-up) for an 8-state "
        "ODE module with P parameters and `obs` observations (one sample, Identity metric).",
        "",
        markdown_table(["P", "obs", "forward ms", "reverse ms", "auto ms", "auto / best",
                        "within 1.2x"], table),
        "",
        f"Worst auto / best: **{worst:.2f}** (goal <= 1.2).",
    ])
    write_results("bench_ode_jacobian", rows, machine_info(jnp.float64), md)


if __name__ == "__main__":
    main()
