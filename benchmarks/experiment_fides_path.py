"""An experiment, not a benchmark of the library: where do modopt's steps leave the path
by which fides reaches Elowitz_Nature2000's best basin from start 44 (seed 0)?

fides (1000 iterations, the Fisher-information Hessian, as the benchmark's fides-full
runs it) from start 44 of the benchmark's Latin-hypercube starts, every parameter fitted,
with each evaluated point recorded; then `fit_petab(method="steps")` (`escape=None`,
`abandon=None`, every parameter fitted) from fides' points after 50, 100 and 150
evaluations; then, from where the steps from the 50th point end, the nllh along
`init_Y_protein` and the steps again with only `init_Y_protein` set to its upper bound.

    .venv/bin/python benchmarks/experiment_fides_path.py

Measured 2026-12-07 (beside a test run on the 2 cores; 26 min): fides -65.448
after 203 evaluations; the steps from its 50th, 100th and 150th points -61.365, -65.463
and -65.49; the nllh along `init_Y_protein` at the first of these -61.365 from -5 to 2
and -61.375 at 3; the steps from there with `init_Y_protein = 3` -65.492. See
docs/bio.md (Elowitz).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import configure_threads  # noqa: E402


def main():
    configure_threads(None)
    import jax

    jax.config.update("jax_enable_x64", True)
    import bench_petab_multistart as bench

    try:
        import fides
    except ImportError as error:
        raise SystemExit("experiment_fides_path needs `pip install fides`") from error
    from modopt.bio import fit_petab, latin_hypercube_starts

    _, problem = bench.load_problem("Elowitz")
    start = np.asarray(latin_hypercube_starts(problem, 100, 0)[44])
    residuals, jacobian, nllh = bench._jitted_objective(problem, start)
    path = []
    objective = bench.fides_objective(
        residuals, jacobian, lambda x: path.append((x.copy(), float(nllh(x)))))
    optimizer = fides.Optimizer(objective, ub=np.asarray(problem.upper),
                                lb=np.asarray(problem.lower), verbose=logging.ERROR,
                                options={fides.Options.MAXITER: 1000})
    optimizer.minimize(start)
    points = np.array([x for x, _ in path])
    print(f"fides: {float(nllh(optimizer.x_min)):.3f} after {len(path)} evaluations; "
          "at the 50th, 100th, 150th: "
          + ", ".join(f"{path[k][1]:.3f}" for k in (50, 100, 150)), flush=True)

    def steps(x0):
        return fit_petab(problem, x0, iterations=300, abandon=None, escape=None,
                         hierarchical=False, progress=False, batch_size=1)

    fit = steps(points[[50, 100, 150]])
    print("steps from fides' 50th, 100th, 150th points:", np.round(fit.nllh, 3), fit.status,
          flush=True)
    stuck, index = np.array(fit.x[0]), list(problem.x_ids).index("init_Y_protein")
    scan = []
    for value in np.linspace(problem.lower[index], problem.upper[index], 9):
        x = stuck.copy()
        x[index] = value
        scan.append(f"{value:.0f}: {float(nllh(x)):.3f}")
    print(f"nllh along init_Y_protein from the first (at {stuck[index]:.2f}):", ", ".join(scan))
    moved = stuck.copy()
    moved[index] = problem.upper[index]
    fit = steps(moved[None])
    print("steps from there with init_Y_protein at its upper bound:", np.round(fit.nllh, 3),
          fit.status)


if __name__ == "__main__":
    main()
