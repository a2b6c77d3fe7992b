"""An experiment, not a benchmark of the library: does geodesic acceleration (Transtrum
and Sethna 2012) raise the share of starts that reach the best fit of a PEtab problem?

A one-start-at-a-time NumPy replica of `fit_petab`'s steps (Levenberg-Marquardt mass
1e-3 halved on acceptance and quadrupled on rejection, Coleman-Li box, step cap 1 in
the box's metric, 100 iterations) on the benchmark's jitted residuals and forward
Jacobians, from the benchmark's Latin-hypercube starts. ``--acceleration`` adds the
second-order correction ``d2 = -G^-1 J^T a`` with ``a`` the second directional
derivative of the residuals along the step ``d`` (finite differences with step
``--h``), applied as ``d + d2 / 2`` when ``2 |d2| / |d| <= 0.75``; ``strict`` rejects
the step otherwise (raising the mass, as published), ``soft`` keeps ``d``.

    .venv/bin/python benchmarks/experiment_geodesic_acceleration.py --problem Bruno
    .venv/bin/python benchmarks/experiment_geodesic_acceleration.py --problem Bruno \
        --acceleration strict --h 0.1
    .venv/bin/python benchmarks/experiment_geodesic_acceleration.py --problem Bruno \
        --acceleration soft --h 0.01

Measured on Bruno (100 starts, within 2 of the best): none 64 % (the steps' share),
strict 6 %, soft 64 %; see docs/bio.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import configure_threads  # noqa: E402


def fit_one(x, residuals, jacobian, lower, upper, iterations, acceleration, h,
            mass=1e-3, max_step=1.0, alpha=0.75):
    """The replica of the steps from `x`; returns the final parameters."""
    width = upper - lower
    r = residuals(x)
    value = 0.5 * r @ r
    if not np.isfinite(value):
        return x
    scale = 1.0
    for _ in range(iterations):
        J = jacobian(x)
        g = J.T @ r
        v = np.where(g > 0, x - lower, np.where(g < 0, upper - x, 1.0))
        v = np.maximum(v, 1e-12 * width)
        G = J.T @ J + np.diag((mass * scale + np.abs(g)) / v)
        d = -np.linalg.solve(G, g)
        if -g @ d < 1e-6 and scale <= 1:
            break
        if acceleration != "none":
            shifted = residuals(x + h * d)
            if np.all(np.isfinite(shifted)):
                a = 2 / h * ((shifted - r) / h - J @ d)
                d2 = -np.linalg.solve(G, J.T @ a)
                small = 2 * np.sqrt(np.sum(d2**2 / v)) <= alpha * np.sqrt(np.sum(d**2 / v))
                if small:
                    d = d + 0.5 * d2
                elif acceleration == "strict":
                    scale = min(scale * 4, 1e8)
                    continue
        norm = np.sqrt(np.sum(d**2 / v))
        capped = norm > max_step
        if capped:
            d = d * max_step / norm
        trial = np.clip(x + d, lower, upper)
        r_trial = residuals(trial)
        trial_value = 0.5 * r_trial @ r_trial
        if np.isfinite(trial_value) and trial_value <= value:
            x, r, value = trial, r_trial, trial_value
            scale = scale if capped else max(scale * 0.5, 1e-8)
        else:
            scale = min(scale * 4, 1e8)
    return x


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="Bruno")
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--acceleration", choices=("none", "strict", "soft"), default="none")
    parser.add_argument("--h", type=float, default=0.1)
    args = parser.parse_args()
    configure_threads(None)
    import jax

    jax.config.update("jax_enable_x64", True)
    import bench_petab_multistart as bench

    from modopt.bio import latin_hypercube_starts

    name, problem = bench.load_problem(args.problem)
    starts = latin_hypercube_starts(problem, args.starts, 0)
    residuals, jacobian, nllh = bench._jitted_objective(problem, np.asarray(starts[0]))
    lower, upper = np.asarray(problem.lower), np.asarray(problem.upper)
    began = time.perf_counter()
    values = np.array([float(nllh(fit_one(
        np.clip(np.asarray(x0), lower, upper), lambda x: np.asarray(residuals(x)),
        lambda x: np.asarray(jacobian(x)), lower, upper, args.iterations,
        args.acceleration, args.h))) for x0 in starts])
    seconds = time.perf_counter() - began
    best = bench.PROBLEMS[name]["best"]
    reference = np.nanmin(values) if best is None else min(best, np.nanmin(values))
    print(f"{name}: acceleration {args.acceleration} (h {args.h}): "
          f"{np.sum(values < reference + 2)}/{args.starts} within 2 of {reference:.3f}, "
          f"best {np.nanmin(values):.3f}, {seconds:.0f} s")


if __name__ == "__main__":
    main()
