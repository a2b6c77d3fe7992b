"""Steps and seconds to 95 % test accuracy on digits: Riemannian steps, the flow, SGD, Adam.

MLP 64-128-128-10, minibatch 64, float32, 5 seeds; each run stops at the target or at
its budget. Compilation is excluded (each step function is warmed up first) and so is
the test-set evaluation.

    .venv/bin/python benchmarks/bench_digits_accuracy.py [--seeds 5] [--target 0.95] [--budget 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _timing import write_results  # noqa: E402

from modopt.cli import DIGITS_CONFIG  # noqa: E402
from modopt.nn.data import load_digits_split  # noqa: E402
from modopt.nn.train import MethodConfig, train  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--budget", type=float, default=60.0)
    args = parser.parse_args()
    rows = []
    for name, options in DIGITS_CONFIG["methods"].items():
        cfg = MethodConfig(name, **options)
        reached_s, reached_steps, finals = [], [], []
        for seed in range(args.seeds):
            data = load_digits_split(seed)
            h = train(cfg, data, seed=seed, budget_s=args.budget, target_accuracy=args.target,
                      eval_every=5, batch_size=DIGITS_CONFIG["batch_size"])
            finals.append(h["test_accuracy"][-1])
            if h["reached"] is not None:
                reached_s.append(h["reached"]["time_s"])
                reached_steps.append(h["reached"]["step"])
            print(name, seed, h["reached"], f"final acc {h['test_accuracy'][-1]:.4f}", flush=True)
        rows.append({
            "method": name,
            "options": options,
            "reached": f"{len(reached_s)}/{args.seeds}",
            "median_seconds": statistics.median(reached_s) if reached_s else None,
            "median_steps": statistics.median(reached_steps) if reached_steps else None,
            "seconds": reached_s,
            "steps": reached_steps,
        })
    header = (f"| method | reached {args.target:.0%} | median seconds | median steps |\n"
              "|---|---|---|---|\n")
    fmt = lambda v, f: "n/a" if v is None else format(v, f)
    table = header + "".join(
        f"| {r['method']} | {r['reached']} | {fmt(r['median_seconds'], '.2f')} | "
        f"{fmt(r['median_steps'], '.0f')} |\n" for r in rows
    )
    meta = {"target": args.target, "budget_s": args.budget, "seeds": args.seeds,
            "batch_size": DIGITS_CONFIG["batch_size"], "model": "MLP 64-128-128-10, float32"}
    command = (f".venv/bin/python benchmarks/bench_digits_accuracy.py --seeds {args.seeds} "
               f"--target {args.target} --budget {args.budget}")
    markdown = (f"# Steps and seconds to {args.target:.0%} test accuracy on digits\n\n"
                f"Command (from the repository root):\n\n    {command}\n\n"
                f"{meta['model']}, minibatch {meta['batch_size']}, {args.seeds} seeds, budget "
                f"{args.budget:.0f} s of stepping per run (compilation and evaluation excluded); "
                "medians over the seeds that reached the target.\n\n" + table)
    write_results("digits_accuracy", rows, meta, markdown)


if __name__ == "__main__":
    main()
