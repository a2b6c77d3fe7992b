"""Test accuracy against wall time and against steps: modopt's Riemannian steps and flow
against optax SGD, optax Adam and kfac-jax's K-FAC.

One MLP classifier (``modopt.mlp``; 64-128-128-10 on digits, 784-256-256-10 on MNIST),
float32, softmax cross-entropy, minibatch 64, the same minibatch order for every method
of a seed. Each run steps for `--budget` seconds; the clock counts the steps only:
every step function is compiled first on warm-up batches (compile time reported
separately) and the test-set evaluations (every `--eval-every` steps) are not timed.
Time and steps to a target are those of the first evaluation at or above it.

Methods (learning rates tuned lightly with ``--tune``, see below):

- ``sgd``, ``adam``: optax, momentum 0.9 for SGD.
- ``kfac``: kfac-jax's K-FAC for stochastic training as its authors recommend: fixed
  momentum 0.9 and learning rate, and here a fixed damping too. They call adaptive
  damping "of questionable effectiveness in the stochastic setting"; here it diverged
  (the damping grew without bound and the loss became NaN within 1000 steps; the
  tuning table has one such run).
- ``kfac_adaptive``: kfac-jax with adaptive learning rate, momentum and damping
  (initial damping 1.0), the configuration of its full-batch examples.
- ``steps_gn``, ``steps_identity``: modopt's Riemannian steps with the Gauss-Newton and
  the identity output metric, mass 1 with the adaptive (Levenberg-Marquardt) mass.
- ``flow_gn``: modopt's Riemannian flow (Gauss-Newton metric), one Heun solve per batch.
- ``steps_gn_mass{0.1,1,10}``: the mass sweep, Gauss-Newton steps at a fixed mass.

    .venv/bin/python benchmarks/bench_nn_optimizers.py                 # digits, 5 seeds
    .venv/bin/python benchmarks/bench_nn_optimizers.py --dataset mnist --data-folder PATH
    .venv/bin/python benchmarks/bench_nn_optimizers.py --tune          # learning-rate grid

``--tune`` runs every candidate of `TUNING` on one seed (100, not one of the measured
seeds) with a validation split carved out of the training set (the test set is not
used) and ranks them by time to the highest target, then by final validation accuracy.
The defaults in `METHODS` are the winners of the digits tuning run
(``results/nn_optimizers_tuning.md``, 10 s per candidate); the existing digits defaults
(``modopt.cli.DIGITS_CONFIG``) were among the candidates and won for SGD and Adam. Before
that run K-FAC was tried with adaptive damping at learning rates 0.03, 0.1 and 0.3: all
three diverged (final validation accuracy 11 %).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
import warnings
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402
from _timing import command_line, configure_threads, machine_info, write_results  # noqa: E402

DEFAULTS = {
    "digits": dict(sizes=(64, 128, 128, 10), budget=30.0, targets=(0.95, 0.97), eval_every=5),
    "mnist": dict(sizes=(784, 256, 256, 10), budget=300.0, targets=(0.98,), eval_every=50),
}

PARSER = argparse.ArgumentParser(description=__doc__.split("\n")[0])
PARSER.add_argument("--dataset", choices=sorted(DEFAULTS), default="digits")
PARSER.add_argument("--data-folder", default=None, help="folder with the MNIST IDX files")
PARSER.add_argument("--seeds", type=int, default=5)
PARSER.add_argument("--budget", type=float, default=None,
                    help="seconds of stepping per run (default: 30 digits, 300 MNIST)")
PARSER.add_argument("--targets", default=None,
                    help="comma-separated test accuracies (default: 0.95,0.97 digits; 0.98 MNIST)")
PARSER.add_argument("--eval-every", type=int, default=None)
PARSER.add_argument("--batch-size", type=int, default=64)
PARSER.add_argument("--methods", default=None, help="comma-separated subset of the methods")
PARSER.add_argument("--tune", action="store_true", help="run the learning-rate grid instead")
PARSER.add_argument("--results-name", default=None,
                    help="file stem (default nn_optimizers[_mnist], _tuning with --tune)")
PARSER.add_argument("--results-dir", default=None,
                    help="folder for the results (default benchmarks/results)")
PARSER.add_argument("--threads", type=int, default=1,
                    help="BLAS/XLA threads (0 = library defaults); 1 is stable on a shared box")
ARGS = PARSER.parse_args()
configure_threads(ARGS.threads or None)

import numpy as np  # noqa: E402

from modopt.nn.datasets import load_dataset  # noqa: E402
from modopt.nn.train import MethodConfig, train  # noqa: E402

M = MethodConfig
# label -> config. The defaults come from the digits tuning run (see the module docstring).
METHODS = {
    "sgd": M("sgd", learning_rate=0.1, momentum=0.9),
    "adam": M("adam", learning_rate=3e-3),
    "kfac": M("kfac", learning_rate=0.3, momentum=0.9,
              extra={"initial_damping": 1.0, "adaptive_damping": False}),
    "kfac_adaptive": M("kfac", learning_rate=None, momentum=None,
                       extra={"initial_damping": 1.0}),
    "steps_gn": M("riemannian_steps", learning_rate=0.3, mass=1.0, metric="gauss_newton"),
    "steps_identity": M("riemannian_steps", learning_rate=0.1, mass=1.0, metric="identity"),
    "flow_gn": M("riemannian_flow", mass=0.05, metric="gauss_newton", flow_s1=1.0,
                 flow_solver="heun", flow_rtol=0.1),
    # The mass sweep: fixed masses, the learning rate of steps_gn.
    **{f"steps_gn_mass{m:g}": M("riemannian_steps", learning_rate=0.3, mass=m,
                                adaptive_mass=False) for m in (0.1, 1.0, 10.0)},
}
MODOPT = [k for k, c in METHODS.items() if c.name.startswith("riemannian")]
PEERS = ("adam", "kfac", "kfac_adaptive")

# The light tuning grid: label -> candidate overrides of its MethodConfig (``extra``
# entries are merged into the method's ``extra``).
_lr = lambda *values: [{"learning_rate": v} for v in values]
_kfac = lambda lr, damping: {"learning_rate": lr, "extra": {"initial_damping": damping}}
TUNING = {
    "sgd": _lr(0.03, 0.1, 0.3),
    "adam": _lr(1e-3, 3e-3, 1e-2),
    "kfac": [_kfac(0.1, 1.0), _kfac(0.3, 1.0), _kfac(1.0, 1.0), _kfac(0.3, 0.3),
             _kfac(0.3, 3.0),
             {"learning_rate": 0.1, "extra": {"initial_damping": 1.0, "adaptive_damping": True}}],
    "steps_gn": _lr(0.3, 1.0),
    "steps_identity": _lr(0.1, 0.3, 1.0),
    "flow_gn": [{"flow_s1": v} for v in (1.0, 2.0, 4.0)],
}
TUNING_SEED = 100


@cache
def load(dataset: str, seed: int):
    if dataset == "digits":
        return load_dataset("digits", seed=seed)
    if ARGS.data_folder is None:
        raise SystemExit("--dataset mnist needs --data-folder PATH (the four IDX files).")
    return load_dataset(dataset, ARGS.data_folder)  # the official split, any seed


def validation_split(data, seed: int, fraction: float = 0.2):
    """Training set -> (train', val'); the test set is left out."""
    x, y = data[0], data[1]
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = int(round(fraction * len(y)))
    val, tr = order[:n_val], order[n_val:]
    return x[tr], y[tr], x[val], y[val]


def run(cfg: MethodConfig, data, seed: int, settings: dict) -> dict:
    return train(cfg, data, seed=seed, sizes=settings["sizes"], batch_size=ARGS.batch_size,
                 budget_s=settings["budget"], targets=settings["targets"],
                 eval_every=settings["eval_every"])


def summary_of_run(h: dict) -> dict:
    steps = h["step"][-1]
    return {
        "seed": h["seed"],
        "targets": h["targets"],
        "final_accuracy": h["test_accuracy"][-1],
        "best_accuracy": max(h["test_accuracy"]),
        "steps": steps,
        "seconds": h["time_s"][-1],
        "ms_per_step": 1000 * h["time_s"][-1] / max(steps, 1),
        "compile_s": h["compile_s"],
        "nonfinite_loss_at_step": h["nonfinite_loss"],
    }


def median_inf(values):
    """Median with unreached runs as +inf (``None`` if the median is not reached)."""
    m = statistics.median(values) if values else math.inf
    return None if math.isinf(m) else m


def curve_on_grid(histories, key: str, grid):
    """Median over runs of the test accuracy at each grid point (last evaluation at or
    before it); NaN where fewer than half of the runs got that far."""
    rows = []
    for h in histories:
        xs, acc = np.asarray(h[key], float), np.asarray(h["test_accuracy"], float)
        idx = np.searchsorted(xs, grid, side="right") - 1
        vals = np.where(idx >= 0, acc[np.clip(idx, 0, None)], np.nan)
        vals[grid > xs[-1]] = np.nan
        rows.append(vals)
    rows = np.asarray(rows)
    enough = np.sum(np.isfinite(rows), axis=0) >= max(1, (len(histories) + 1) // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        med = np.nanmedian(rows, axis=0)
    return np.where(enough, med, np.nan)


def plot(curves: dict, settings: dict, out: Path, name: str, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, label, suffix in (("time", "seconds of stepping (compilation and evaluation "
                                "excluded)", "accuracy_time"),
                               ("steps", "steps (minibatches)", "accuracy_steps")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (method, c) in enumerate(curves.items()):
            style = "-" if method in MODOPT else "--"
            ax.plot(c[key + "_grid"], c[key], style, color=plt.cm.tab10(i % 10), label=method)
        for t in settings["targets"]:
            ax.axhline(t, color="0.6", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (median over seeds)")
        ax.set_ylim(max(0.0, min(settings["targets"]) - 0.15), 1.0)
        ax.grid(alpha=0.3, which="both")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = out / f"{name}_{suffix}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path.name)
    return written


def fmt(v, f=".2f", none="not reached"):
    return none if v is None else format(v, f)


def main_tune(settings: dict, name: str) -> None:
    rows = []
    data = validation_split(load(ARGS.dataset, TUNING_SEED), TUNING_SEED)
    top = str(max(settings["targets"]))
    labels = [k for k in TUNING if ARGS.methods is None or k in ARGS.methods.split(",")]
    for label in labels:
        for override in TUNING[label]:
            cfg = with_overrides(METHODS[label], override)
            h = run(cfg, data, TUNING_SEED, settings)
            s = summary_of_run(h)
            reached = s["targets"][top]
            rows.append({"method": label, "override": override, "hyperparameters":
                         hyperparameters(cfg), **s,
                         "time_to_top_target": None if reached is None else reached["time_s"]})
            print(label, override, "->", s["targets"], f"final {s['final_accuracy']:.4f}",
                  flush=True)
    lines = [f"# Learning-rate tuning on {ARGS.dataset} (validation split, seed {TUNING_SEED})",
             "", "Command (from the repository root):", "", f"    {command_line()}", "",
             f"One run per candidate, {settings['budget']:.0f} s of stepping, validation set = "
             "20 % of the training set (the test set is not used). Ranked by time to "
             f"{float(top):.0%} validation accuracy, then by final accuracy, then by time "
             "per step.", "",
             f"| method | hyperparameters | s to {float(top):.0%} | steps to {float(top):.0%} | "
             "final | ms/step | best |", "|---|---|---|---|---|---|---|"]
    for label in labels:
        mine = [r for r in rows if r["method"] == label]
        key = lambda r: (math.inf if r["time_to_top_target"] is None else r["time_to_top_target"],
                         -r["final_accuracy"], r["ms_per_step"])
        best = min(mine, key=key)
        for r in mine:
            t = r["targets"][top]
            lines.append(f"| {label} | {r['hyperparameters']} | "
                         f"{fmt(None if t is None else t['time_s'])} | "
                         f"{fmt(None if t is None else t['step'], '.0f')} | "
                         f"{r['final_accuracy']:.4f} | {r['ms_per_step']:.2f} | "
                         f"{'**yes**' if r is best else ''} |")
    meta = machine_info(np.float32)
    meta.update(command=command_line(), dataset=ARGS.dataset, seed=TUNING_SEED,
                batch_size=ARGS.batch_size, **{k: list(v) if isinstance(v, tuple) else v
                                               for k, v in settings.items()})
    write_results(name, rows, meta, "\n".join(lines))


def main() -> None:
    settings = dict(DEFAULTS[ARGS.dataset])
    if ARGS.budget is not None:
        settings["budget"] = ARGS.budget
    if ARGS.targets is not None:
        settings["targets"] = tuple(float(t) for t in ARGS.targets.split(","))
    if ARGS.eval_every is not None:
        settings["eval_every"] = ARGS.eval_every
    out = Path(ARGS.results_dir) if ARGS.results_dir else _timing.RESULTS
    _timing.RESULTS = out  # write_results writes there
    out.mkdir(parents=True, exist_ok=True)
    stem = "nn_optimizers" if ARGS.dataset == "digits" else f"nn_optimizers_{ARGS.dataset}"
    if ARGS.tune:
        return main_tune(settings, ARGS.results_name or stem + "_tuning")
    name = ARGS.results_name or stem
    labels = list(METHODS) if ARGS.methods is None else ARGS.methods.split(",")
    unknown = set(labels) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    targets = [str(t) for t in settings["targets"]]

    histories, runs, skipped = {}, {}, {}
    started = time.perf_counter()
    for label in labels:
        cfg = METHODS[label]
        histories[label], runs[label] = [], []
        for seed in range(ARGS.seeds):
            data = load(ARGS.dataset, seed if ARGS.dataset == "digits" else 0)
            try:
                h = run(cfg, data, seed, settings)
            except Exception as error:  # kfac-jax missing or failing: report, go on
                if cfg.name != "kfac":
                    raise
                skipped[label] = f"not run: {type(error).__name__}: {error}"
                break
            histories[label].append(h)
            runs[label].append(summary_of_run(h))
            r = runs[label][-1]
            reached = ", ".join(
                f"{t}: " + ("not reached" if r["targets"][t] is None
                            else f"{r['targets'][t]['time_s']:.2f} s") for t in targets)
            print(f"{label} seed {seed}: {reached}; final {r['final_accuracy']:.4f}; "
                  f"{r['ms_per_step']:.2f} ms/step; {r['steps']} steps", flush=True)
        if label in skipped:
            histories.pop(label), runs.pop(label)
            print(label, skipped[label], flush=True)

    rows = []
    for label, rs in runs.items():
        row = {"method": label, "config": dataclasses.asdict(METHODS[label]), "runs": rs}
        for t in targets:
            secs = [math.inf if r["targets"][t] is None else r["targets"][t]["time_s"] for r in rs]
            steps = [math.inf if r["targets"][t] is None else r["targets"][t]["step"] for r in rs]
            row[t] = {"reached": sum(math.isfinite(s) for s in secs), "of": len(rs),
                      "median_seconds": median_inf(secs), "median_steps": median_inf(steps)}
        row["median_final_accuracy"] = statistics.median(r["final_accuracy"] for r in rs)
        row["median_ms_per_step"] = statistics.median(r["ms_per_step"] for r in rs)
        row["median_compile_s"] = statistics.median(r["compile_s"] for r in rs)
        row["nonfinite_runs"] = sum(r["nonfinite_loss_at_step"] is not None for r in rs)
        rows.append(row)
    by = {r["method"]: r for r in rows}

    def ratio(label, peer, t, key="median_seconds"):
        if peer not in by:
            return None
        a, b = by[label][t][key], by[peer][t][key]
        return None if a is None or b is None else a / b

    for r in rows:
        for t in targets:
            for peer in PEERS:
                r[t][f"time_ratio_to_{peer}"] = ratio(r["method"], peer, t)
                r[t][f"steps_ratio_to_{peer}"] = ratio(r["method"], peer, t, "median_steps")

    # Curves (median over seeds) on common grids, for the plots and the JSON.
    curves = {}
    for label, hs in histories.items():
        t_max = max(h["time_s"][-1] for h in hs)
        s_max = max(h["step"][-1] for h in hs)
        t_min = min((h["time_s"][1] for h in hs if len(h["time_s"]) > 1), default=1e-3)
        tg = np.geomspace(max(0.8 * t_min, 1e-4), max(t_max, 2 * t_min, 1e-3), 200)
        sg = np.unique(np.geomspace(1, max(s_max, 2), 200).round())
        curves[label] = {"time_grid": tg, "time": curve_on_grid(hs, "time_s", tg),
                         "steps_grid": sg, "steps": curve_on_grid(hs, "step", sg)}
    title = (f"{ARGS.dataset}: MLP {'-'.join(map(str, settings['sizes']))}, batch "
             f"{ARGS.batch_size}, {ARGS.seeds} seeds; modopt solid, peers dashed")
    plots = plot(curves, settings, out, name, title) if curves else []
    for r in rows:
        c = curves[r["method"]]
        r["median_curve"] = {k: [None if not np.isfinite(v) else float(v) for v in c[k]]
                             for k in c}

    # Markdown.
    tt = [f"{float(t):.0%}" for t in targets]
    header = (["method", "hyperparameters"] + [f"reached {p}" for p in tt]
              + [f"median s to {p}" for p in tt] + [f"x Adam time {p}" for p in tt]
              + [f"median steps to {p}" for p in tt]
              + ["median final acc", "ms/step", "compile s", "non-finite runs"])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        c = METHODS[r["method"]]
        hp = hyperparameters(c)
        cells = ([r["method"], hp] + [f"{r[t]['reached']}/{r[t]['of']}" for t in targets]
                 + [fmt(r[t]["median_seconds"]) for t in targets]
                 + [fmt(r[t]["time_ratio_to_adam"], ".2f", "-") for t in targets]
                 + [fmt(r[t]["median_steps"], ".0f") for t in targets]
                 + [f"{r['median_final_accuracy']:.4f}", f"{r['median_ms_per_step']:.2f}",
                    f"{r['median_compile_s']:.1f}", str(r["nonfinite_runs"])])
        table.append("| " + " | ".join(cells) + " |")
    for label, why in skipped.items():
        table.append(f"| {label} | {hyperparameters(METHODS[label])} | {why} |")
    meta = machine_info(np.float32)
    meta.update(command=command_line(), dataset=ARGS.dataset, seeds=ARGS.seeds,
                batch_size=ARGS.batch_size, sizes=list(settings["sizes"]),
                budget_s=settings["budget"], targets=list(settings["targets"]),
                eval_every=settings["eval_every"], plots=plots, skipped=skipped,
                tuning=TUNING, wall_s=time.perf_counter() - started)
    md = [f"# Test accuracy against time and steps on {ARGS.dataset}: modopt vs SGD, Adam, K-FAC",
          "", "Command (from the repository root):", "", f"    {command_line()}", "",
          f"MLP {'-'.join(map(str, settings['sizes']))} (`modopt.mlp`), float32, minibatch "
          f"{ARGS.batch_size}, {ARGS.seeds} seeds (seed = data split, initial weights and "
          f"batch order), {settings['budget']:.0f} s of stepping per run; compilation "
          "(warm-up on a throw-away state) and test evaluation (every "
          f"{settings['eval_every']} steps) are not timed. jax {meta['jax_version']}, "
          f"{meta['cpu_count']} CPUs, BLAS/XLA threads {meta['threads']}, load average at start "
          f"{meta['loadavg_start'][0]:.2f}. Medians over all seeds with unreached runs "
          "counted as infinite (\"not reached\" when the median run did not reach it). "
          "\"x Adam\" is the ratio of median times (below 1: faster than Adam). "
          "Plots: " + ", ".join(f"[{p}]({p})" for p in plots) + ".", "",
          *table, "", *verdict(rows, targets), "",
          "Learning rates: tuned lightly with `--tune` (one seed, validation split; "
          "candidates: " + "; ".join(f"{k}: " + " / ".join(
              hyperparameters(with_overrides(METHODS[k], o)) for o in v)
              for k, v in TUNING.items()) + "); see `nn_optimizers_tuning.md`."]
    write_results(name, rows, meta, "\n".join(md))


def with_overrides(cfg: MethodConfig, override: dict) -> MethodConfig:
    override = dict(override)
    if "extra" in override:
        override["extra"] = {**cfg.extra, **override["extra"]}
    return dataclasses.replace(cfg, **override)


def hyperparameters(c: MethodConfig) -> str:
    if c.name in ("sgd", "adam"):
        return f"lr {c.learning_rate:g}" + (f", momentum {c.momentum:g}" if c.name == "sgd" else "")
    if c.name == "kfac":
        lr = "adaptive" if c.learning_rate is None else f"{c.learning_rate:g}"
        mom = "adaptive" if c.momentum is None else f"{c.momentum:g}"
        damping = c.extra.get("initial_damping", 1.0)
        if c.extra.get("adaptive_damping", True):
            return f"lr {lr}, momentum {mom}, damping adaptive from {damping:g}"
        return f"lr {lr}, momentum {mom}, damping {damping:g} fixed"
    if c.name == "riemannian_flow":  # the flow has no adaptive mass
        return (f"{c.metric}, mass {c.mass:g}, s1 {c.flow_s1:g} per batch, {c.flow_solver} "
                f"rtol {c.flow_rtol:g}")
    mass = f"mass {c.mass:g}" + (" adaptive" if c.adaptive_mass else " fixed")
    return f"{c.metric}, lr {c.learning_rate:g}, {mass}"


def verdict(rows, targets) -> list[str]:
    """Plain statements computed from the table: each modopt variant against Adam and
    K-FAC (the stochastic configuration), by time and by steps, with the cost per step
    that explains the difference."""
    by = {r["method"]: r for r in rows}
    lines = ["## Where modopt wins and loses (computed from the table)", ""]
    for t in targets:
        for key, unit in (("median_seconds", "s"), ("median_steps", "steps")):
            reached = [r for r in rows if r[t][key] is not None]
            if reached:
                best = min(reached, key=lambda r: r[t][key])
                lines.append(f"- Fewest {'seconds' if unit == 's' else 'steps'} to "
                             f"{float(t):.0%}: {best['method']} ({best[t][key]:.4g} {unit}).")
    lines.append("")
    for label in [m for m in MODOPT if m in by]:
        r = by[label]
        for peer in [p for p in ("adam", "kfac") if p in by]:
            p = by[peer]
            parts = []
            for t in targets:
                a, b = r[t], p[t]
                if a["median_seconds"] is None and b["median_seconds"] is None:
                    parts.append(f"neither reaches {float(t):.0%}")
                    continue
                if a["median_seconds"] is None:
                    parts.append(f"{float(t):.0%}: loses (not reached; {peer} "
                                 f"{b['median_seconds']:.2f} s, {b['median_steps']:.0f} steps)")
                    continue
                if b["median_seconds"] is None:
                    parts.append(f"{float(t):.0%}: wins ({a['median_seconds']:.2f} s, "
                                 f"{a['median_steps']:.0f} steps; {peer} does not reach it)")
                    continue
                time_word = "wins" if a["median_seconds"] < b["median_seconds"] else "loses"
                step_word = "fewer" if a["median_steps"] < b["median_steps"] else "more"
                parts.append(f"{float(t):.0%}: {time_word} on time "
                             f"({a['median_seconds'] / b['median_seconds']:.2f}x) with "
                             f"{step_word} steps ({a['median_steps']:.0f} vs "
                             f"{b['median_steps']:.0f})")
            cost = r["median_ms_per_step"] / p["median_ms_per_step"]
            lines.append(f"- {label} vs {peer}: " + "; ".join(parts)
                         + f". A step costs {cost:.1f}x {peer}'s "
                         f"({r['median_ms_per_step']:.2f} vs {p['median_ms_per_step']:.2f} ms); "
                         f"final accuracy {r['median_final_accuracy']:.4f} vs "
                         f"{p['median_final_accuracy']:.4f}.")
    return lines


if __name__ == "__main__":
    main()
