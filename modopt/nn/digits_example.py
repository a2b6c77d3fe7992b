"""The digits example: one MLP, four optimisers, the same wall-clock budget each."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from .._plotting import pyplot
from .data import load_digits_split
from .train import METHODS, MethodConfig, train


def _method_configs(config: dict) -> list[MethodConfig]:
    methods = config.get("methods", {})
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}.")
    return [MethodConfig(name, **options) for name, options in methods.items()]


def run_digits(config: dict, out: Path) -> dict:
    """Train every configured method on digits and write ``summary.json`` and plots.

    **Arguments:** `config` with keys ``budget_s``, ``batch_size``, ``seed``, ``sizes``
    and ``methods`` (name -> `MethodConfig` options); `out` the results folder.

    **Returns:** the summary dict.
    """
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits_split(config.get("seed", 0))
    budget = float(config.get("budget_s", 20.0))
    histories = {}
    for cfg in _method_configs(config):
        with tqdm(total=round(budget, 1), desc=cfg.name, unit="s", mininterval=1.0) as bar:

            def progress(name, elapsed, total, acc, bar=bar):
                bar.set_postfix(test_acc=f"{acc:.3f}", refresh=False)
                bar.update(round(min(elapsed, total), 1) - bar.n)

            histories[cfg.name] = train(
                cfg, data, seed=config.get("seed", 0),
                sizes=config.get("sizes", (64, 128, 128, 10)),
                batch_size=config.get("batch_size", 64), budget_s=budget, progress=progress,
            )
    summary = {
        "example": "digits",
        "budget_s": budget,
        "methods": {
            name: {
                "final_test_accuracy": h["test_accuracy"][-1],
                "best_test_accuracy": max(h["test_accuracy"]),
                "steps": h["step"][-1],
                "ms_per_step": 1000 * h["time_s"][-1] / max(h["step"][-1], 1),
                "compile_s": h["compile_s"],
            }
            for name, h in histories.items()
        },
        "histories": histories,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(histories, out)
    return summary


def _plot(histories: dict, out: Path) -> None:
    plt = pyplot()

    for key, label, name in (
        ("loss", "training loss (minibatch)", "loss.png"),
        ("test_accuracy", "test accuracy", "test_accuracy.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, h in histories.items():
            ax.plot(h["time_s"], h[key], label=method)
        ax.set_xlabel("wall time (s, compilation excluded)")
        ax.set_ylabel(label)
        if key == "loss":
            ax.set_yscale("log")
        else:
            lowest = min(min(h["test_accuracy"][1:], default=0.0) for h in histories.values())
            ax.set_ylim(max(0.0, lowest - 0.05), 1.0)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
