"""The ``modopt`` command: ``modopt demo``, ``modopt run CONFIG.toml`` and
``modopt fit-petab PROBLEM.yaml``."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

DIGITS_CONFIG = {
    "example": "digits",
    "run": "digits-demo",
    "budget_s": 20.0,
    "batch_size": 64,
    "seed": 0,
    "sizes": [64, 128, 128, 10],
    "methods": {
        "riemannian_steps": {"learning_rate": 1.0, "mass": 1.0, "metric": "gauss_newton"},
        "riemannian_flow": {"mass": 0.05, "metric": "gauss_newton", "flow_s1": 2.0,
                            "flow_solver": "heun", "flow_rtol": 0.1},
        "sgd": {"learning_rate": 0.1, "momentum": 0.9},
        "adam": {"learning_rate": 3e-3},
    },
}

EXAMPLES = ("digits", "parameter_recovery", "circuit_design", "morphogen",
            "toggle_dose_response", "stability")


def _recovery_problem(name: str):
    import numpy as np

    from .systems.recovery import RecoveryProblem

    if name == "toggle_switch":
        from .bio import TOGGLE_NOMINAL, toggle_switch

        conditions = [[iptg, u0, v0] for iptg in (0.0, 1e-5, 3e-5, 1e-3)
                      for u0, v0 in ((0.1, 10.0), (10.0, 0.1))]
        return RecoveryProblem(
            lambda times, p: toggle_switch(times, p, rtol=1e-7, atol=1e-7),
            TOGGLE_NOMINAL, np.array(conditions), output_names=("u", "v"),
        )
    if name == "repressilator":
        from .bio.repressilator import repressilator_problem

        return repressilator_problem()
    if name == "tanh_node_circuit":
        import diffrax

        from .circuits import TANH_NODE_NOMINAL, tanh_node_circuit

        return RecoveryProblem(
            lambda times, p: tanh_node_circuit(
                times, p, solver=diffrax.Tsit5(), rtol=1e-6, atol=1e-8
            ),
            TANH_NODE_NOMINAL, np.array([[1.0], [3.0]]), output_names=("x", "z", "i"),
        )
    raise SystemExit(
        f"modopt: unknown recovery model {name!r}; known: toggle_switch, repressilator, "
        "tanh_node_circuit."
    )


def _run_recovery(config: dict, out: Path) -> None:
    import numpy as np

    from .systems.recovery import recover, write_report

    problem = _recovery_problem(config.get("model", ""))
    t = config.get("times", {})
    times = np.linspace(t.get("start", 0.25), t.get("stop", 10.0), t.get("num", 20))
    options = {k: config[k] for k in ("noise", "noise_floor", "start_offset", "seed", "mass",
                                       "s1", "gtol", "max_steps", "action") if k in config}
    summary = recover(problem, times, progress=True, **options)
    write_report(summary, out, problem.output_names)
    if "action" in summary:
        report = summary["action"]
        print(f"action S = {report['action']:.6g}, gap S - (h(start) - h(end)) = "
              f"{report['action_gap']:.3g}, mean |H| = {report['mean_abs_hamiltonian']:.3g}")
    for name, row in summary["parameters"].items():
        print(f"{name:>8}: truth {row['truth']:.5g}  estimate {row['estimate']:.5g}  "
              f"error {100 * row['relative_error']:+.2f} %  z {row['z_score']:+.2f}")


def _run(config: dict, out_root: Path) -> Path:
    example = config.get("example")
    if example not in EXAMPLES:
        raise SystemExit(f"modopt: unknown example {example!r}; known: {', '.join(EXAMPLES)}.")
    out = out_root / config.get("run", example)
    if example != "digits":
        import jax

        jax.config.update("jax_enable_x64", True)
    if example == "parameter_recovery":
        _run_recovery(config, out)
    elif example == "morphogen":
        from .bio.morphogen_example import run_morphogen

        run_morphogen(config, out)
    elif example == "toggle_dose_response":
        from .bio.toggle_example import run_toggle_dose_response

        run_toggle_dose_response(config, out)
    elif example == "stability":
        from .diagnostics.stability_example import run_stability

        run_stability(config, out)
    elif example == "circuit_design":
        from .circuits.design_examples import run_design

        run_design(config, out)
    else:
        from .nn.digits_example import run_digits

        run_digits(config, out)
    return out


def _batch_size(text: str):
    """``--batch-size``: 'auto' or a non-negative integer."""
    if text == "auto":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {text!r}")
    return int(text)


def _fit_petab(args) -> int:
    if args.devices:
        # Read by XLA when JAX first creates its CPU backend, i.e. not yet.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                   f"platform_device_count={args.devices}").strip()
    import jax

    jax.config.update("jax_enable_x64", True)
    from .bio import EarlyAbandon, PetabError, PlateauEscape, SBMLError, load_petab
    from .bio.fit import fit_petab
    from .bio.report import write_fit_report

    if not args.problem.is_file():
        raise SystemExit(f"modopt fit-petab: no PEtab yaml file at {args.problem}")
    if "auto" in args.profile and len(args.profile) > 1:
        raise SystemExit("modopt fit-petab: --profile takes 'auto' alone or kinds")
    try:
        problem = load_petab(args.problem, rtol=args.rtol, atol=args.atol,
                             max_steps=args.max_steps)
    except (PetabError, SBMLError) as error:
        raise SystemExit(f"modopt fit-petab: {error}") from None
    print(f"{problem}; {len(jax.devices())} device(s)")
    result = fit_petab(problem, args.starts, method=args.method, iterations=args.iterations,
                       mass=args.mass, max_step=args.max_step or None,
                       batch_size=args.batch_size if args.batch_size != 0 else None,
                       escape=None if args.no_escape else PlateauEscape(),
                       hierarchical="auto" if "auto" in args.profile else tuple(args.profile),
                       abandon=None if args.no_abandon else EarlyAbandon(), seed=args.seed)
    out = Path(args.out) / f"fit-petab-{args.problem.stem}-{args.method}"
    summary = write_fit_report(problem, result, out, args.reference_nllh)
    print(f"best nllh {summary['best_nllh']:.4f}; within 2 of the best: "
          f"{100 * summary['fraction_within_2_of_best']:.0f} % of {args.starts} starts; "
          f"{summary['status_counts']}; {summary['wall_time_s']:.0f} s")
    print(f"results written to {out}/")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="modopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run the shipped example: a Butterworth LC ladder designed from 20 "
        "random starts (examples/circuits/butterworth_ladder.toml)")
    demo.add_argument("--out", default="results", help="results folder")
    run = sub.add_parser("run", help="run an example from a TOML config file")
    run.add_argument("config", type=Path)
    run.add_argument("--out", default="results", help="results folder")
    fit = sub.add_parser("fit-petab", help="multi-start fit of a PEtab problem (Latin-hypercube "
                         "starts in the bounds, one vmapped batch)")
    fit.add_argument("problem", type=Path, help="the PEtab yaml file")
    fit.add_argument("--starts", type=int, default=100, help="number of starts (default 100)")
    fit.add_argument("--method", choices=("steps", "flow"), default="steps",
                     help="Riemannian steps (default) or the Riemannian flow")
    fit.add_argument("--iterations", type=int, default=200,
                     help="steps per start (flow: solver steps)")
    fit.add_argument("--mass", type=float, default=1e-3, help="diagonal mass")
    fit.add_argument("--max-step", type=float, default=1.0,
                     help="longest step of the scaled parameters (0: no limit; default 1)")
    fit.add_argument("--batch-size", type=_batch_size, default="auto",
                     help="starts run at once as one batch: a number, 0 for all, or 'auto' "
                     "(the default: one per device or 8, whichever is faster per start)")
    fit.add_argument("--no-escape", action="store_true",
                     help="end where the local method ends (default: scan the flat "
                     "directions of the Fisher metric and fit again from a lower point)")
    fit.add_argument("--profile", nargs="*", choices=("auto", "scaling", "noise"),
                     default=["auto"], metavar="KIND",
                     help="kinds of parameters that only the observables use to profile out "
                     "in closed form: scaling, noise, or auto (the default: the scalings, "
                     "and the noise level when one covers every measurement); "
                     "'--profile' alone: none")
    fit.add_argument("--no-abandon", action="store_true",
                     help="run every start to its own end (default: the steps abandon a start "
                     "whose pace cannot bring it within 2 of the best nllh found so far)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the Latin hypercube")
    fit.add_argument("--rtol", type=float, default=1e-6, help="ODE relative tolerance")
    fit.add_argument("--atol", type=float, default=1e-8, help="ODE absolute tolerance")
    fit.add_argument("--max-steps", type=int, default=20_000, help="ODE solver step limit")
    fit.add_argument("--devices", type=int, default=None,
                     help="on CPU: split the host into this many JAX devices and shard the "
                     "starts over them")
    fit.add_argument("--reference-nllh", type=float, default=None,
                     help="a best known nllh, to report the share of starts within 2 of it")
    fit.add_argument("--out", default="results", help="results folder")
    args = parser.parse_args(argv)

    if args.command == "fit-petab":
        return _fit_petab(args)
    if args.command == "demo":
        from .circuits.design_examples import DEFAULT_LADDER

        config = dict(DEFAULT_LADDER)
    else:
        if not args.config.is_file():
            raise SystemExit(f"modopt run: no config file at {args.config}.")
        try:
            config = tomllib.loads(args.config.read_text())
        except tomllib.TOMLDecodeError as error:
            raise SystemExit(f"modopt run: {args.config} is not valid TOML: {error}") from None
    out = _run(config, Path(args.out))
    print(f"results written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
