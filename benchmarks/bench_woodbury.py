"""Woodbury (dual) per-block solve vs a dense n x n Cholesky solve, float64.

Solves ``(mu I + K^T K) u = g`` with ``K`` of shape ``(d, n)``:

- Woodbury: ``modopt.linalg.woodbury_solve(k, g, dinv)`` with ``dinv = 1/mu`` as an
  ``(n,)`` vector (the form modopt's generic path passes), jitted.
- Dense: form ``G = K^T K + mu I`` (``n x n``) and solve by Cholesky
  (``jax.scipy.linalg.cho_factor/cho_solve``), jitted; forming G is part of the timing.

Reports the dense/Woodbury ratio per (n, d), the least-squares exponent of Woodbury
time in n over n >= 1024 per d, and whether both agree to relative 1e-8 (plus the
matrix-free residual ``||G u - g|| / ||g||`` of the Woodbury answer).

Goals: >= 100x faster at n = 16384, d = 10; Woodbury exponent <= 1.2.

Run from the repository root: ``.venv/bin/python benchmarks/bench_woodbury.py``
(``--max-n 4096`` for a quick partial run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    command_line,
    configure_threads,
    machine_info,
    markdown_table,
    time_jitted,
    write_results,
)

PARSER = argparse.ArgumentParser()
PARSER.add_argument("--max-n", type=int, default=16384)
PARSER.add_argument("--threads", type=int, default=1,
                    help="BLAS/XLA threads (0 = library defaults); 1 is stable on a shared box")
ARGS = PARSER.parse_args()
configure_threads(ARGS.threads or None)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg as jsl  # noqa: E402
import numpy as np  # noqa: E402

import modopt  # noqa: E402

NS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
DS = [10, 40, 160]
MU = 1.0
DTYPE = jnp.float64
REL_TOL = 1e-8


def dense_solve(k, g, mu):
    n = k.shape[1]
    gram = k.T @ k + mu * jnp.eye(n, dtype=k.dtype)
    return jsl.cho_solve(jsl.cho_factor(gram, lower=True), g)


def dense_repeats(n, d):
    # One dense run takes ~50 s at n = 16384 (single thread): 3 runs for the goal case
    # (d = 10), one honest run for the others, to keep the script near 6 minutes.
    if n >= 16384:
        return 3 if d == 10 else 1
    if n >= 8192:
        return 3
    return 7


def main():
    ns = [n for n in NS if n <= ARGS.max_n]
    start = time.perf_counter()

    woodbury = jax.jit(modopt.linalg.woodbury_solve)
    dense = jax.jit(dense_solve)

    # Dispatch floor: a trivial jitted op on an (n,) vector, for reading the small times.
    floor = time_jitted(jax.jit(lambda g: g * 2.0), jnp.ones(16384, DTYPE), repeats=200)
    meta = machine_info(jnp.dtype(DTYPE))
    meta.update(mu=MU, rel_tol=REL_TOL, dispatch_floor_median_s=floor["median_s"],
                command=command_line(),
                notes="K ~ N(0,1) entries (d x n), g ~ N(0,1), dinv = full((n,), 1/mu). "
                      "Dense at n >= 8192 is compiled ahead of time (lower().compile(), "
                      "timed exactly) so no untimed n^3 run is spent; every other case "
                      "compiles on a first call whose execution is subtracted.")

    rows = []
    for d in DS:
        for n in ns:
            kk, kg = jax.random.split(jax.random.key(1000 * d + n))
            k = jax.random.normal(kk, (d, n), DTYPE)
            g = jax.random.normal(kg, (n,), DTYPE)
            dinv = jnp.full((n,), 1.0 / MU, DTYPE)
            mu = jnp.asarray(MU, DTYPE)

            w = time_jitted(woodbury, k, g, dinv, repeats=25, min_total_s=0.3)
            big = n >= 8192
            t_dense = time_jitted(dense, k, g, mu, repeats=dense_repeats(n, d),
                                  min_total_s=0.0 if big else 0.3, compile_call=not big)

            u_w = np.asarray(w.pop("output"))
            u_d = np.asarray(t_dense.pop("output"))
            rel = float(np.linalg.norm(u_w - u_d) / np.linalg.norm(u_d))
            kn = np.asarray(k)
            residual = float(np.linalg.norm(kn.T @ (kn @ u_w) + MU * u_w - np.asarray(g))
                             / np.linalg.norm(np.asarray(g)))
            row = dict(
                n=n, d=d,
                woodbury_median_s=w["median_s"], woodbury_compile_s=w["compile_s"],
                woodbury_first_call_s=w["first_call_s"], woodbury_repeats=w["repeats"],
                woodbury_all_s=w["all"],
                dense_median_s=t_dense["median_s"], dense_compile_s=t_dense["compile_s"],
                dense_first_call_s=t_dense["first_call_s"], dense_repeats=t_dense["repeats"],
                dense_all_s=t_dense["all"],
                ratio_dense_over_woodbury=t_dense["median_s"] / w["median_s"],
                rel_diff=rel, woodbury_residual=residual, agree=bool(rel <= REL_TOL),
            )
            rows.append(row)
            print(f"d={d:4d} n={n:6d} woodbury {w['median_s'] * 1e6:10.1f} us  "
                  f"dense {t_dense['median_s'] * 1e3:10.2f} ms  "
                  f"ratio {row['ratio_dense_over_woodbury']:10.1f}  rel {rel:.1e}  "
                  f"[{time.perf_counter() - start:.0f}s]", flush=True)
            del k, g, dinv

    exponents = {}
    for d in DS:
        sel = [r for r in rows if r["d"] == d and r["n"] >= 1024]
        if len(sel) >= 2:
            slope = np.polyfit(np.log([r["n"] for r in sel]),
                               np.log([r["woodbury_median_s"] for r in sel]), 1)[0]
            exponents[d] = float(slope)
    meta["woodbury_exponent_n_ge_1024"] = {str(d): e for d, e in exponents.items()}
    meta["wall_s"] = time.perf_counter() - start

    goal_row = next((r for r in rows if r["n"] == 16384 and r["d"] == 10), None)
    goals = []
    if goal_row is not None:
        ratio = goal_row["ratio_dense_over_woodbury"]
        goals.append(f"- Speed-up at n=16384, d=10: {ratio:,.0f}x (goal >= 100x): "
                     f"{'MET' if ratio >= 100 else 'NOT MET'}")
    for d, e in exponents.items():
        goals.append(f"- Woodbury exponent in n (n >= 1024), d={d}: {e:.2f} (goal <= 1.2): "
                     f"{'MET' if e <= 1.2 else 'NOT MET'}")
    n_agree = sum(r["agree"] for r in rows)
    goals.append(f"- Agreement (relative difference <= {REL_TOL:g}): {n_agree}/{len(rows)} cases")
    meta["goals"] = goals

    table = markdown_table(
        ["n", "d", "Woodbury median", "Woodbury compile", "dense median", "dense compile",
         "dense repeats", "dense / Woodbury", "rel. diff", "agree"],
        [[r["n"], r["d"], f"{r['woodbury_median_s'] * 1e6:,.1f} us",
          f"{r['woodbury_compile_s'] * 1e3:,.0f} ms",
          f"{r['dense_median_s'] * 1e3:,.2f} ms", f"{r['dense_compile_s'] * 1e3:,.0f} ms",
          r["dense_repeats"], f"{r['ratio_dense_over_woodbury']:,.1f}x",
          f"{r['rel_diff']:.1e}", "yes" if r["agree"] else "NO"] for r in rows],
    )
    md = "\n".join([
        "# Woodbury vs dense solve (float64)",
        "",
        "Command (from the repository root):",
        "",
        f"    {meta['command']}",
        "",
        f"Date {meta['date_utc']}, jax {meta['jax_version']}, {meta['cpu_count']} CPUs, "
        f"{meta['dtype']}, mu = {MU}, BLAS/XLA threads: {meta['threads']}. "
        "Medians of >= 25 (Woodbury) / >= 7 (dense; 3 at n=8192; at n=16384 3 for d=10 and "
        "a single run for d=40, 160) timed calls after compilation (ahead-of-time "
        "compilation for dense at n >= 8192, so no untimed run). "
        f"Dispatch floor (trivial jitted op): {floor['median_s'] * 1e6:.1f} us. "
        f"Load average at start {meta['loadavg_start'][0]:.2f} (machine shared, timings noisy).",
        "",
        table,
        "",
        "Fitted exponent of Woodbury time in n (least squares of log t on log n, n >= 1024): "
        + ", ".join(f"d={d}: {e:.2f}" for d, e in exponents.items()),
        "",
        "Goals:",
        "",
        *goals,
        "",
    ])
    write_results("bench_woodbury", rows, meta, md)


if __name__ == "__main__":
    main()
