"""The ``modopt`` command: ``modopt demo`` and ``modopt run CONFIG.toml``."""

from __future__ import annotations

import argparse
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

EXAMPLES = ("digits", "parameter_recovery", "circuit_design")


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
        f"modopt: unknown recovery model {name!r}; known: toggle_switch, tanh_node_circuit."
    )


def _run_recovery(config: dict, out: Path) -> None:
    import numpy as np

    from .systems.recovery import recover, write_report

    problem = _recovery_problem(config.get("model", ""))
    t = config.get("times", {})
    times = np.linspace(t.get("start", 0.25), t.get("stop", 10.0), t.get("num", 20))
    options = {k: config[k] for k in ("noise", "noise_floor", "start_offset", "seed", "mass",
                                       "s1", "gtol", "max_steps") if k in config}
    summary = recover(problem, times, progress=True, **options)
    write_report(summary, out, problem.output_names)
    for name, row in summary["parameters"].items():
        print(f"{name:>8}: truth {row['truth']:.5g}  estimate {row['estimate']:.5g}  "
              f"error {100 * row['relative_error']:+.2f} %  z {row['z_score']:+.2f}")


def _run(config: dict, out_root: Path) -> Path:
    example = config.get("example")
    if example not in EXAMPLES:
        raise SystemExit(f"modopt: unknown example {example!r}; known: {', '.join(EXAMPLES)}.")
    out = out_root / config.get("run", example)
    if example in ("parameter_recovery", "circuit_design"):
        import jax

        jax.config.update("jax_enable_x64", True)
    if example == "parameter_recovery":
        _run_recovery(config, out)
    elif example == "circuit_design":
        from .circuits.design_examples import run_design

        run_design(config, out)
    else:
        from .nn.digits_example import run_digits

        run_digits(config, out)
    return out


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
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .circuits.design_examples import DEFAULT_LADDER

        config = dict(DEFAULT_LADDER)
    else:
        if not args.config.is_file():
            raise SystemExit(f"modopt run: no config file at {args.config}.")
        try:
            config = tomllib.loads(args.config.read_text())
        except tomllib.TOMLDecodeError as error:
            raise SystemExit(f"modopt run: {args.config} is not valid TOML: {error}")
    out = _run(config, Path(args.out))
    print(f"results written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
