"""Time per training step: plain SGD vs the Riemannian step (generic and structured).

MLP 64-128-128-10 (``modopt.mlp``) on scikit-learn's digits (pixels / 16), float32,
softmax cross-entropy, one fixed batch of 32 or 128 samples. Each step is one
``eqx.filter_jit`` function:

- ``plain``: ``eqx.filter_value_and_grad`` of the loss + SGD update ``w - lr g``.
- ``generic``: ``modopt.riemannian_gradient(..., jacobian=modopt.Reverse(structured=False))``
  + update ``w - lr u`` (per-block ``K`` materialised, Woodbury solve per block).
- ``structured``: the same with ``modopt.Reverse(structured=True)`` (Gram Woodbury,
  ``K`` never formed).

each Riemannian variant for ``output_metric`` ``Identity()`` and ``GaussNewton()``
(exact factor of softmax cross-entropy), ``mass=1.0``. Also records whether the
generic and structured directions agree.

Goal: the structured step at most 10x a plain step at batch 32.

Run from the repository root: ``.venv/bin/python benchmarks/bench_step_time.py``.
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
PARSER.add_argument("--threads", type=int, default=1,
                    help="BLAS/XLA threads (0 = library defaults); 1 is stable on a shared box")
ARGS = PARSER.parse_args()
configure_threads(ARGS.threads or None)

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import modopt  # noqa: E402

BATCHES = [32, 128]
LR = 0.1
MASS = 1.0
SIZES = [64, 128, 128, 10]
LOSS = modopt.losses.softmax_cross_entropy
METRICS = {"Identity": modopt.metrics.Identity(), "GaussNewton": modopt.metrics.GaussNewton()}
JACOBIANS = {
    "generic": modopt.Reverse(structured=False),
    "structured": modopt.Reverse(structured=True),
}


def plain_step(model, x, y):
    def loss_of(m):
        return LOSS(jax.vmap(m)(x), y)

    value, grads = eqx.filter_value_and_grad(loss_of)(model)
    return value, eqx.apply_updates(model, jax.tree.map(lambda g: -LR * g, grads))


def riemannian_step(metric, jacobian):
    def step(model, x, y):
        value, u = modopt.riemannian_gradient(
            model, LOSS, x, y, output_metric=metric, mass=MASS, jacobian=jacobian
        )
        return value, eqx.apply_updates(model, jax.tree.map(lambda v: -LR * v, u))

    return step


def direction_of(metric, jacobian):
    def fn(model, x, y):
        return modopt.riemannian_gradient(
            model, LOSS, x, y, output_metric=metric, mass=MASS, jacobian=jacobian
        )[1]

    return eqx.filter_jit(fn)


def rel_diff(a, b):
    fa = np.concatenate([np.ravel(v) for v in jax.tree.leaves(a)]).astype(np.float64)
    fb = np.concatenate([np.ravel(v) for v in jax.tree.leaves(b)]).astype(np.float64)
    return float(np.linalg.norm(fa - fb) / np.linalg.norm(fb))


def main():
    start = time.perf_counter()
    digits = load_digits()
    data_x = jnp.asarray(digits.data / 16.0, jnp.float32)
    data_y = jnp.asarray(digits.target, jnp.int32)
    model = modopt.mlp(SIZES, key=jr.key(0), dtype=jnp.float32)
    dtype = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))[0].dtype
    assert dtype == jnp.float32, dtype

    meta = machine_info(jnp.dtype(dtype))
    meta.update(command=command_line(), lr=LR, mass=MASS, sizes=SIZES,
                num_params=int(sum(
                    v.size for v in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
                )),
                notes="One fixed batch (the first `batch` digits). compile_s = first call "
                      "minus the median (the first call compiles and runs once).")

    rows = []
    for batch in BATCHES:
        x, y = data_x[:batch], data_y[:batch]
        cases = [("plain", "-", eqx.filter_jit(plain_step))]
        for jname, jac in JACOBIANS.items():
            for mname, metric in METRICS.items():
                cases.append((jname, mname, eqx.filter_jit(riemannian_step(metric, jac))))
        plain_median = None
        for method, mname, fn in cases:
            t = time_jitted(fn, model, x, y, repeats=15, min_total_s=1.5, max_repeats=2000)
            value, new_model = t.pop("output")
            finite = bool(np.isfinite(float(value))) and all(
                bool(jnp.all(jnp.isfinite(v)))
                for v in jax.tree.leaves(eqx.filter(new_model, eqx.is_inexact_array))
            )
            if method == "plain":
                plain_median = t["median_s"]
            row = dict(batch=batch, method=method, metric=mname,
                       median_s=t["median_s"], compile_s=t["compile_s"],
                       first_call_s=t["first_call_s"], repeats=t["repeats"], all_s=t["all"],
                       ratio_to_plain=t["median_s"] / plain_median, loss=float(value),
                       finite=finite)
            rows.append(row)
            print(f"batch={batch:4d} {method:10s} {mname:12s} {t['median_s'] * 1e3:9.3f} ms "
                  f"(x{row['ratio_to_plain']:6.1f})  compile {t['compile_s']:.2f}s  "
                  f"n={t['repeats']}  [{time.perf_counter() - start:.0f}s]", flush=True)

        # Do the generic and structured paths give the same direction?
        for mname, metric in METRICS.items():
            u_gen = direction_of(metric, JACOBIANS["generic"])(model, x, y)
            u_str = direction_of(metric, JACOBIANS["structured"])(model, x, y)
            diff = rel_diff(u_str, u_gen)
            for r in rows:
                if r["batch"] == batch and r["metric"] == mname:
                    r["rel_diff_structured_vs_generic"] = diff
            print(f"batch={batch:4d} {mname}: ||u_structured - u_generic|| / ||u_generic|| "
                  f"= {diff:.2e}", flush=True)

    meta["wall_s"] = time.perf_counter() - start
    goals = []
    for r in rows:
        if r["batch"] == 32 and r["method"] == "structured":
            goals.append(f"- Structured step, batch 32, {r['metric']}: "
                         f"{r['ratio_to_plain']:.1f}x "
                         f"a plain step (goal <= 10x): "
                         f"{'MET' if r['ratio_to_plain'] <= 10 else 'NOT MET'}")
    meta["goals"] = goals

    table = markdown_table(
        ["batch", "step", "output metric", "ms / step (median)", "compile", "x plain",
         "repeats", "rel. diff structured vs generic"],
        [[r["batch"], r["method"], r["metric"], f"{r['median_s'] * 1e3:,.3f}",
          f"{r['compile_s']:.2f} s", f"{r['ratio_to_plain']:.1f}x", r["repeats"],
          f"{r['rel_diff_structured_vs_generic']:.1e}" if "rel_diff_structured_vs_generic" in r
          else "-"] for r in rows],
    )
    md = "\n".join([
        "# Step time: plain SGD vs Riemannian steps (MLP 64-128-128-10, digits, float32)",
        "",
        "Command (from the repository root):",
        "",
        f"    {meta['command']}",
        "",
        f"Date {meta['date_utc']}, jax {meta['jax_version']}, {meta['cpu_count']} CPUs, "
        f"{meta['dtype']}, {meta['num_params']} parameters, mass {MASS}, lr {LR}, "
        f"BLAS/XLA threads: {meta['threads']}. A step is "
        "the (Riemannian) gradient plus the update, one `eqx.filter_jit` function; medians of "
        ">= 15 timed calls (more until 1.5 s is spent) after a compiling first call. "
        f"Load average at start {meta['loadavg_start'][0]:.2f} (machine shared, timings noisy).",
        "",
        table,
        "",
        "Goals:",
        "",
        *goals,
        "",
    ])
    write_results("bench_step_time", rows, meta, md)


if __name__ == "__main__":
    main()
