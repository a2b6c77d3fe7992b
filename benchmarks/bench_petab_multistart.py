"""Multi-start fitting of the PEtab benchmark problems: modopt's Riemannian steps and flow
against ``scipy.optimize.least_squares`` (trf) and fides (the reference stack's optimizer,
``--methods fides`` after ``pip install fides``) on the same objective and Jacobians.

Protocol (the published one, scaled by ``--starts``): the same Latin-hypercube starts in
the bounds for every method; per problem the best nllh, the share of starts ending
within 2 of the best known value, and converged starts per minute of wall time.
Compilation is excluded: every jitted function is compiled on the same batch shape
before the timed run (modopt's runners are cached per configuration; trf's residual and
Jacobian are compiled once).

    .venv/bin/python benchmarks/bench_petab_multistart.py --starts 100
    .venv/bin/python benchmarks/bench_petab_multistart.py --problems Boehm Bruno --starts 20

Reads ``../shared/data/petab`` (or ``tests/data/petab``); writes
``benchmarks/results/petab_multistart.{json,md}`` for the protocol's 100 starts, 100
iterations and seed 0, else ``petab_multistart_{starts}starts_{iterations}it_seed{seed}``
(so a smaller or another run never replaces the protocol's rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    command_line,
    configure_threads,
    machine_info,
    markdown_table,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = [ROOT.parent / "shared/data/petab", ROOT / "tests/data/petab"]

# Best known nllh and the reference stack's share within 2 (shared/data/README.md):
# 1000-start runs for Boehm/Bruno/Fiedler, pyPESTO+AMICI+fides with 100 starts for all.
PROBLEMS = {
    "Boehm_JProteomeRes2014": {"best": 138.222, "published": "2.4 % (1000 starts); 3 %",
                               "reference_per_min": 2.1},
    "Bruno_JExpBot2016": {"best": -46.688, "published": "69 % (1000 starts); 71 %",
                          "reference_per_min": 82},
    "Elowitz_Nature2000": {"best": -65.633, "published": "2 %", "reference_per_min": 0.17},
    "Fiedler_BMCSystBiol2016": {"best": -58.584, "published": "8.2 % (1000 starts); 6 %",
                                "reference_per_min": 0.43},
    "Perelson_Science1996": {"best": 222.28, "published": "44 %", "reference_per_min": 187},
    "Rahman_MBS2016": {"best": None, "published": "100 %", "reference_per_min": 29},
}


def _problem_path(name):
    for root in DATA:
        path = root / name / f"{name}.yaml"
        if path.is_file():
            return path
    raise SystemExit(f"bench_petab_multistart: no {name}.yaml under {DATA}")


def load_problem(short):
    """The full name of the benchmark problem whose name starts with `short`, and the
    problem loaded as the benchmark loads it (``rtol=1e-6, atol=1e-8``)."""
    from modopt.bio import load_petab

    name = next(n for n in PROBLEMS if n.startswith(short))
    return name, load_petab(_problem_path(name), rtol=1e-6, atol=1e-8, max_steps=20_000)


def _variant(method):
    """``(base, local, hierarchical, every)`` of a method name
    ``base[-local][-full|-noise][-all]``: ``-local`` without `PlateauEscape`; what is
    profiled out (`fit_petab`'s `hierarchical`): ``"auto"`` (the default), nothing with
    ``-full``, scalings and noise levels with ``-noise``; ``-all`` with every start run to
    its own end (no `EarlyAbandon`)."""
    base, *flags = method.split("-")
    hierarchical = False if "full" in flags else True if "noise" in flags else "auto"
    return base, "local" in flags, hierarchical, "all" in flags


def _objective(problem, starts, hierarchical):
    """The objective a method moves on, as `fit_petab(hierarchical=...)` makes it, and
    its starts."""
    from modopt.bio.hierarchical import kinds_to_profile, profiled

    objective = profiled(problem, kinds_to_profile(problem, hierarchical))
    outer = getattr(objective, "outer_positions", slice(None))
    return objective, np.asarray(starts)[:, outer]


def run_modopt(problem, starts, method, iterations):
    """`method`: "steps" or "flow" (with `PlateauEscape`, ``hierarchical="auto"`` and
    `EarlyAbandon`, the defaults), with "-local" (``escape=None``), "-full"
    (``hierarchical=False``), "-noise" (``hierarchical=True``), "-all" (``abandon=None``)."""
    from modopt.bio import EarlyAbandon, PlateauEscape, fit_petab

    base, local, hierarchical, every = _variant(method)
    options = dict(method=base, iterations=iterations,
                   escape=None if local else PlateauEscape(), hierarchical=hierarchical,
                   abandon=None if every else EarlyAbandon())
    fit_petab(problem, starts, compile_only=True, **options)
    fit = fit_petab(problem, starts, progress=False, **options)
    # A start whose solve raised keeps its last good nllh, so failures come from the status.
    return (fit.nllh, [s == "converged" for s in fit.status],
            [s.startswith("failed") for s in fit.status], fit.wall_time_s,
            {"restarted": int(np.count_nonzero(fit.info["escapes"])),
             "escape_time_s": fit.info["escape_time_s"],
             "batch_calls": {str(k): v for k, v in fit.info["batch_calls"].items()}})


def _jitted_objective(problem, x):
    """The residuals, their forward Jacobian and the nllh, jitted and compiled at `x`."""
    import jax

    residuals = jax.jit(problem._residuals)
    jacobian = jax.jit(jax.jacfwd(problem._residuals))
    nllh = jax.jit(problem._nllh)
    for function in (residuals, jacobian, nllh):
        function(x).block_until_ready()
    return residuals, jacobian, nllh


def run_trf(problem, starts, iterations, hierarchical):
    from scipy.optimize import least_squares

    problem, starts = _objective(problem, starts, hierarchical)
    residuals, jacobian, nllh = _jitted_objective(problem, np.asarray(starts[0]))

    def fit(x0):
        result = least_squares(
            lambda x: np.nan_to_num(np.asarray(residuals(x)), nan=1e10),
            x0, jac=lambda x: np.nan_to_num(np.asarray(jacobian(x))),
            bounds=(problem.lower, problem.upper), method="trf", max_nfev=iterations)
        return result.x, result.status > 0

    return _one_by_one(fit, nllh, starts)


def fides_objective(residuals, jacobian, evaluated=None):
    """fides' objective ``x -> (0.5 |r|^2, r^T J, J^T J)`` (the Fisher-information
    Hessian), NaN where the residuals or their Jacobian are not finite; `evaluated(x)`, if
    given, is called at every finite evaluation."""

    def objective(x):
        r, J = np.asarray(residuals(x)), np.asarray(jacobian(x))
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(J))):
            return np.nan, np.full(x.shape, np.nan), np.full((x.size, x.size), np.nan)
        if evaluated is not None:
            evaluated(x)
        return 0.5 * r @ r, r @ J, J.T @ J

    return objective


def run_fides(problem, starts, iterations, hierarchical):
    """fides (the reference stack's optimizer: reflective trust region, 2D subspace) with
    the Fisher-information (Gauss-Newton) Hessian, as pyPESTO runs it on AMICI."""
    try:
        import fides
    except ImportError as error:
        raise SystemExit("bench_petab_multistart: --methods fides needs `pip install "
                         "fides` (a benchmark peer, not a modopt dependency)") from error
    import logging

    problem, starts = _objective(problem, starts, hierarchical)
    residuals, jacobian, nllh = _jitted_objective(problem, np.asarray(starts[0]))
    objective = fides_objective(residuals, jacobian)

    def fit(x0):
        optimizer = fides.Optimizer(objective, ub=np.asarray(problem.upper),
                                    lb=np.asarray(problem.lower), verbose=logging.ERROR,
                                    options={fides.Options.MAXITER: iterations})
        optimizer.minimize(np.asarray(x0))
        return optimizer.x_min, optimizer.exitflag > 0

    return _one_by_one(fit, nllh, starts)


def _one_by_one(fit, nllh, starts):
    """Run `fit(x0) -> (x, converged)` on each start in turn, timed; a start whose nllh is
    not finite at the start, or whose fit raises, counts as failed (a NaN nllh).
    **Returns:** nllh, converged and failed per start, and the wall time."""
    values, converged = [], []
    began = time.perf_counter()
    for x0 in starts:
        if not np.isfinite(float(nllh(x0))):
            values.append(np.nan)
            converged.append(False)
            continue
        try:
            x, done = fit(x0)
            value = float(nllh(x))
            values.append(value if np.isfinite(value) else np.nan)
            converged.append(bool(done) and np.isfinite(value))
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            values.append(np.nan)
            converged.append(False)
    values = np.array(values)
    return values, converged, list(~np.isfinite(values)), time.perf_counter() - began


PEERS = {"trf": run_trf, "fides": run_fides}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="*", default=["Boehm", "Bruno", "Fiedler",
                                                           "Perelson", "Rahman", "Elowitz"])
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--methods", nargs="*", default=["steps", "trf", "flow"],
                        help="steps, flow, trf, fides; -local: no plateau escape (steps, "
                             "flow); -full: no parameter profiled out; -noise: noise levels too; "
                             "-all: no abandoned starts (steps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_threads(None)
    import jax

    jax.config.update("jax_enable_x64", True)
    from modopt.bio import latin_hypercube_starts

    # Earlier runs of the same protocol are kept: a run of some problems or methods
    # replaces only their rows (so a long benchmark can be done in parts, and parts can
    # run at once: the file is read again before each write).
    logged = False
    for short in args.problems:
        name, problem = load_problem(short)
        starts = latin_hypercube_starts(problem, args.starts, args.seed)
        for method in args.methods:
            base, _, hierarchical, _ = _variant(method)
            if base in PEERS:
                values, converged, failed, seconds = PEERS[base](problem, starts,
                                                                 args.iterations, hierarchical)
                extra = {}
            else:
                values, converged, failed, seconds, extra = run_modopt(
                    problem, starts, method, args.iterations)
            print(f"{name} {method}: best {np.nanmin(values):.3f}, {seconds:.0f} s {extra}",
                  flush=True)
            runs, commands = _earlier_runs(args)
            if not logged:
                commands.append(command_line())
                logged = True
            runs[(name, method)] = {
                "problem": name, "method": method, "wall_time_s": float(seconds),
                "nllh": [None if not np.isfinite(v) else float(v) for v in values],
                "converged": [bool(c) for c in converged],
                "failed": [bool(f) for f in failed], **extra}
            report(runs, commands, args)  # after every run: a long benchmark keeps its results


def _results_name(args):
    if (args.starts, args.iterations, args.seed) == (100, 100, 0):
        return "petab_multistart"
    return f"petab_multistart_{args.starts}starts_{args.iterations}it_seed{args.seed}"


def _earlier_runs(args):
    """Runs stored in the results JSON by the same protocol (starts, iterations, seed)."""
    path = ROOT / f"benchmarks/results/{_results_name(args)}.json"
    if not path.is_file():
        return {}, []
    stored = json.loads(path.read_text())
    meta = stored["meta"]
    if (meta.get("starts"), meta.get("iterations"), meta.get("seed")) != (
            args.starts, args.iterations, args.seed) or "runs" not in stored:
        return {}, []
    return ({(r["problem"], r["method"]): r for r in stored["runs"]},
            list(meta.get("commands", [])))


def summarise(runs):
    """Per (problem, method): best nllh, share within 2 of the reference, starts per minute.
    The reference is the best known value, or the best any method found when lower."""
    rows = []
    for name in PROBLEMS:
        mine = [r for key, r in runs.items() if key[0] == name]
        if not mine:
            continue
        found = [np.nanmin(np.array(r["nllh"], float)) for r in mine]
        known = PROBLEMS[name]["best"]
        reference = min(found) if known is None else min(known, min(found))
        for run in mine:
            values = np.array(run["nllh"], float)
            within = np.isfinite(values) & (values <= reference + 2)
            converged = np.array(run["converged"], bool)
            # Runs stored before the flags were kept: a failed start had a NaN nllh.
            failed = np.array(run.get("failed", ~np.isfinite(values)), bool)
            seconds = run["wall_time_s"]
            rows.append({
                "problem": name, "method": run["method"], "starts": len(values),
                "best_nllh": float(np.nanmin(values)), "reference_nllh": float(reference),
                "fraction_within_2": float(within.mean()),
                "published_fraction_within_2": PROBLEMS[name]["published"],
                "converged": int(converged.sum()), "failed": int(failed.sum()),
                "wall_time_s": seconds,
                "converged_per_min": 60 * float(converged.sum()) / seconds,
                "within_2_per_min": 60 * float(within.sum()) / seconds,
                "reference_converged_per_min": PROBLEMS[name]["reference_per_min"],
                "restarted": run.get("restarted"), "escape_time_s": run.get("escape_time_s"),
            })
    return rows


def report(runs, commands, args):
    """Write the table of all `runs` so far (JSON with the per-start values, markdown)."""
    rows = summarise(runs)
    header = ["problem", "method", "starts", "best nllh", "within 2 of best",
              "published (within 2)", "within-2/min", "reference within-2/min",
              "stopped by own test", "failed", "wall s", "own stops/min",
              "restarted (escape s)"]
    table = markdown_table(header, [[
        r["problem"].split("_")[0], r["method"], r["starts"], f"{r['best_nllh']:.3f}",
        f"{100 * r['fraction_within_2']:.0f} %", r["published_fraction_within_2"],
        f"{r['within_2_per_min']:.2f}", r["reference_converged_per_min"],
        r["converged"], r["failed"], f"{r['wall_time_s']:.0f}",
        f"{r['converged_per_min']:.2f}",
        "" if r["restarted"] is None else f"{r['restarted']} ({r['escape_time_s']:.0f})"]
        for r in rows])
    meta = {"commands": commands, "starts": args.starts, "iterations": args.iterations,
            "ode": "Kvaerno5 rtol 1e-6 atol 1e-8 max_steps 20000, forward sensitivities",
            "modopt": ("fit_petab defaults: batch_size auto (1 or 8), max_step 1, mass 1e-3, "
                       "retries 0, Coleman-Li box, PlateauEscape (points 17, null_tolerance 1e-6, "
                       "min_gain 1, rounds 2), hierarchical 'auto', EarlyAbandon (factor 10, "
                       "margin 2); '-local': escape=None; '-all': abandon=None; "
                       "'-full': hierarchical=False, '-noise': hierarchical=True (also for "
                       "trf and fides)"),
            "fides": "fides 0.8.0, Fisher-information Hessian, maxiter = iterations",
            "seed": args.seed, **machine_info(np.float64)}
    runs_md = "\n".join(f"    {c}" for c in commands)
    markdown = ("# PEtab multi-start benchmark\n\n"
                f"Made by\n\n{runs_md}\n\n{table}\n\n"
                "Best known nllh and published shares: `shared/data/README.md`. "
                "'within 2' counts starts whose final nllh is within 2 of the best known "
                "value (or of the best any method found, when that is lower or unknown). "
                "'within-2/min': those starts per minute of wall time, the measure of the "
                "reference column (the reference stack's 'converged starts per minute', "
                "which counts starts that reach the best value; see benchmarks/README.md). "
                "'stopped by own test': the method's own convergence test (modopt: "
                "Fisher-metric gradient norm below gtol or no progress over a chunk; trf: "
                "scipy's status > 0; fides: its exit flag > 0), which also stops on "
                "plateaus and local minima. "
                "Methods: steps and flow profile out scaling parameters, and the noise "
                "level where one covers every measurement (Elowitz, Perelson; "
                "`fit_petab(hierarchical='auto')`, the default; trf and fides then run on "
                "the same profiled objective) and scan the flat directions of the Fisher "
                "metric where a start ends (`PlateauEscape`); the steps abandon starts that "
                "cannot catch up with the best so far (`EarlyAbandon`). '-local': without "
                "the scan; '-all': no start abandoned; '-full': every estimated parameter "
                "fitted (rows measured before 2026-12-06, when the commands above named "
                "them without '-full'); '-noise': every noise level profiled out too "
                "(Boehm's rows with it were measured under the plain name before "
                "2026-12-06's 'auto'). "
                "A row is from the last command above that names its problem and method.\n")
    write_results(_results_name(args), rows, meta, markdown)
    path = ROOT / f"benchmarks/results/{_results_name(args)}.json"
    stored = json.loads(path.read_text())
    stored["runs"] = list(runs.values())
    path.write_text(json.dumps(stored, indent=1) + "\n")


if __name__ == "__main__":
    main()
