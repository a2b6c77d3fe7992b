"""Results of a multi-start PEtab fit on disk: a table, a summary, a waterfall plot and
the best fit against the data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .._plotting import pyplot
from .fit import MultistartResult
from .petab import PetabProblem


def write_fit_report(problem: PetabProblem, fit: MultistartResult, out: Path,
                     reference_nllh: float | None = None) -> dict:
    """Write ``starts.csv``, ``starts.md``, ``summary.json``, ``waterfall.png`` and
    ``best_fit.png`` into `out`.

    **Arguments:** `reference_nllh`: a best known value; the share of starts within 2
    of it is reported next to the share within 2 of this run's best.

    **Returns:** the summary dict.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "starts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["start", "nllh", "status", *fit.x_ids])
        for i in fit.order:
            writer.writerow([i, fit.nllh[i], fit.status[i], *fit.x[i]])
    (out / "starts.md").write_text(fit.table() + "\n")
    best = int(fit.order[0])
    summary = {
        "problem": problem.yaml_path.name,
        "method": fit.method,
        "starts": len(fit.nllh),
        "best_nllh": fit.best_nllh,
        "best_x": dict(zip(fit.x_ids, map(float, fit.x[best]), strict=True)),
        "fraction_within_2_of_best": fit.fraction_within(),
        "status_counts": {s: fit.status.count(s) for s in sorted(set(fit.status))},
        "wall_time_s": fit.wall_time_s,
        **fit.info,
    }
    if reference_nllh is not None:
        summary["reference_nllh"] = reference_nllh
        summary["fraction_within_2_of_reference"] = fit.fraction_within(reference_nllh)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plots(problem, fit, out, best, reference_nllh)
    return summary


def _plots(problem, fit, out, best, reference_nllh):
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    values = np.sort(fit.nllh[np.isfinite(fit.nllh)])
    floor = values[0] if reference_nllh is None else min(values[0], reference_nllh)
    ax.semilogy(np.arange(1, len(values) + 1), values - floor + 1, "o-", ms=3)
    ax.axhline(3.0, color="grey", ls="--", lw=0.8, label="within 2 of the best")
    ax.set_xlabel("start (sorted)")
    ax.set_ylabel(f"nllh - {floor:.3f} + 1")
    failed = sum(status.startswith("failed") for status in fit.status)
    ax.set_title(f"{problem.yaml_path.stem}: {fit.method}, {len(fit.nllh)} starts"
                 + (f" ({failed} failed)" if failed else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "waterfall.png", dpi=120)
    plt.close(fig)

    simulated = np.asarray(problem.simulations(fit.x[best]))
    observables = [o for o in problem._observables if o.rows.size]
    fig, axes = plt.subplots(len(observables), 1, figsize=(6, 2.2 * len(observables)),
                             squeeze=False)
    for ax, o in zip(axes[:, 0], observables, strict=True):
        times = problem._measurement_times[o.rows]
        ax.plot(times, problem.measurements[o.rows], "k.", label="data")
        order = np.argsort(times, kind="stable")
        ax.plot(times[order], simulated[o.rows][order], "C1.", label="best fit")
        ax.set_ylabel(o.observable_id, fontsize=8)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("time")
    fig.tight_layout()
    fig.savefig(out / "best_fit.png", dpi=110)
    plt.close(fig)
