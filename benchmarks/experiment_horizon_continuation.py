"""An experiment, not a benchmark of the library: does fitting a time course over a
growing time horizon (first the early measurements, then more) bring more starts of an
oscillating model into an oscillating fit?

``scipy.optimize.least_squares`` (trf) on the benchmark's jitted residuals and forward
Jacobians (every estimated parameter fitted), from the benchmark's Latin-hypercube
starts. Stage ``k`` fits only the residuals of measurements at times up to
``--horizons[k]``, with at most ``--budgets[k]`` evaluations, from where stage ``k - 1``
ended; the last horizon should cover every measurement. One horizon equal to the last
time point with a budget of 100 is the benchmark's trf-full (its `--iterations` are
trf's `max_nfev`).

    .venv/bin/python benchmarks/experiment_horizon_continuation.py --problem Elowitz \
        --horizons 250 420 600 --budgets 30 30 40
    .venv/bin/python benchmarks/experiment_horizon_continuation.py --problem Elowitz \
        --horizons 160 320 460 600 --budgets 25 25 25 25

Measured on Elowitz (100 starts, seed 0, 2026-12-07): none within 2 of the best known
-65.633 either way; three stages: best -53.20, a second start at -52.98 (1650 s beside
another benchmark on the 2 cores); four stages: best -37.40 (806 s). The benchmark's
trf-full on the same starts: best -27.47 (279 s); see docs/bio.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import configure_threads  # noqa: E402


def fit_one(x, residuals, jacobian, lower, upper, masks, budgets):
    """trf from `x` over each mask of the residuals in turn; returns the last parameters."""
    from scipy.optimize import least_squares

    for mask, budget in zip(masks, budgets):
        x = least_squares(
            lambda x, mask=mask: np.nan_to_num(residuals(x), nan=1e10)[mask], x,
            jac=lambda x, mask=mask: np.nan_to_num(jacobian(x))[mask],
            bounds=(lower, upper), method="trf", max_nfev=budget).x
    return x


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="Elowitz")
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--horizons", type=float, nargs="+", default=[250, 420, 600])
    parser.add_argument("--budgets", type=int, nargs="+", default=[30, 30, 40])
    args = parser.parse_args()
    if len(args.horizons) != len(args.budgets):
        parser.error("--horizons and --budgets need one value per stage")
    configure_threads(None)
    import jax

    jax.config.update("jax_enable_x64", True)
    import bench_petab_multistart as bench

    from modopt.bio import latin_hypercube_starts

    name, problem = bench.load_problem(args.problem)
    starts = latin_hypercube_starts(problem, args.starts, 0)
    residuals, jacobian, nllh = bench._jitted_objective(problem, np.asarray(starts[0]))
    times = np.asarray(problem._measurement_times)
    # One standardised residual per measurement, then one noise residual per
    # measurement when the noise is estimated (PetabProblem._residuals).
    repeats = np.asarray(residuals(starts[0])).size // times.size
    masks = [np.tile(times <= horizon, repeats) for horizon in args.horizons]
    lower, upper = np.asarray(problem.lower), np.asarray(problem.upper)
    values = []
    began = time.perf_counter()
    for x0 in starts:
        if not np.isfinite(float(nllh(x0))):
            values.append(np.nan)
            continue
        try:
            x = fit_one(np.asarray(x0), lambda x: np.asarray(residuals(x)),
                        lambda x: np.asarray(jacobian(x)), lower, upper, masks, args.budgets)
            values.append(float(nllh(x)))
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            values.append(np.nan)
    seconds = time.perf_counter() - began
    values = np.array(values)
    best = bench.PROBLEMS[name]["best"]
    reference = np.nanmin(values) if best is None else min(best, np.nanmin(values))
    print(f"{name}: horizons {args.horizons}, budgets {args.budgets}: "
          f"{np.sum(values < reference + 2)}/{args.starts} within 2 of {reference:.3f}, "
          f"best {np.nanmin(values):.3f}, five best {np.sort(values[np.isfinite(values)])[:5]}, "
          f"{seconds:.0f} s")


if __name__ == "__main__":
    main()
