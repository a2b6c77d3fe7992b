"""Overhead of a CasADi-defined module against its JAX-native twin, float64.

The module is ``y = sin(W x + b)`` with ``x`` of size 4, ``W`` 3 x 4 and ``b`` of size 3,
once as a `modopt.systems.casadi.CasadiModule` of a CasADi SX Function (evaluated on
the host through ``jax.pure_callback``, a batch in one call of ``function.map(n)``) and
once written in jax.numpy. For batch sizes 1, 32 and 256, jitted, timed after a
warm-up call (compilation is never timed; ``jax.block_until_ready``; median of the
repeats):

- ``value``: the batch of outputs, ``jax.vmap(module)(X)``;
- ``jvp``: ``jax.jvp`` of the batch of outputs in (parameters, inputs);
- ``vjp``: ``jax.vjp`` of the same, pulled back along one cotangent;
- ``rg <mode>``: `modopt.riemannian_gradient` of the network
  ``Linear(3, 4), tanh, module, Linear(3, 2)`` (squared error, Identity metric,
  mass 1e-2) with ``Forward()``, ``Reverse()`` and ``AutoJacobian()``.

The CasADi module is timed with ``derivatives="jacobian"`` (the default: CasADi's
Jacobian per sample, both modes) and, for the derivative rows, ``"directional"``
(``function.forward(1)`` for ``jvp`` and ``rg forward``, ``function.reverse(1)`` for
``vjp``, ``rg reverse`` and ``rg auto``). Every CasADi result is checked against the twin.

Run from the repository root: ``.venv/bin/python benchmarks/bench_casadi_overhead.py``
(about 30 s on 2 shared cores).
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
PARSER.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
PARSER.add_argument("--repeats", type=int, default=15)
PARSER.add_argument("--threads", type=int, default=1,
                    help="BLAS/XLA threads (0 = library defaults); 1 is stable on a shared box")
ARGS = PARSER.parse_args()
configure_threads(ARGS.threads or None)

import casadi  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import modopt  # noqa: E402
from modopt.systems.casadi import CasadiModule  # noqa: E402

DTYPE = jnp.float64
MIN_TOTAL_S = 0.15


class JaxLayer(modopt.AbstractModule):
    """The JAX-native twin: ``sin(W x + b)`` with the same parameter dict."""

    params: dict
    in_shape: tuple = eqx.field(static=True, kw_only=True, default=(4,))
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __call__(self, x):
        return jnp.sin(self.params["w"] @ x + self.params["b"])


def casadi_function():
    x, w, b = casadi.SX.sym("x", 4), casadi.SX.sym("w", 3, 4), casadi.SX.sym("b", 3)
    return casadi.Function("layer", [x, w, b], [casadi.sin(casadi.mtimes(w, x) + b)],
                           ["x", "w", "b"], ["y"])


def params0():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(3, 4)), DTYPE),
            "b": jnp.asarray(rng.normal(size=3), DTYPE)}


def network(middle):
    k0, k1 = jax.random.split(jax.random.key(0))
    return modopt.Sequential([modopt.Linear(3, 4, key=k0, dtype=DTYPE), modopt.Pointwise(jnp.tanh),
                              middle, modopt.Linear(3, 2, key=k1, dtype=DTYPE)])


def operations(batch):
    """``{name: (fn, args_of(module))}``: jitted functions of a module and the data."""
    rng = np.random.default_rng(batch)
    xs = jnp.asarray(rng.normal(size=(batch, 4)), DTYPE)
    ys = jnp.asarray(rng.normal(size=(batch, 3)), DTYPE)
    tangent_p = {k: jnp.asarray(rng.normal(size=v.shape), DTYPE) for k, v in params0().items()}
    tangent_x = jnp.asarray(rng.normal(size=(batch, 4)), DTYPE)
    net_in = jnp.asarray(rng.normal(size=(batch, 3)), DTYPE)
    net_out = jnp.asarray(rng.normal(size=(batch, 2)), DTYPE)

    def outputs(params, static, x):
        return jax.vmap(eqx.combine(params, static))(x)

    def value(module):
        return jax.vmap(module)(xs)

    def jvp(module):
        params, static = eqx.partition(module, eqx.is_inexact_array)
        tp = eqx.filter(module, eqx.is_inexact_array)
        tp = eqx.tree_at(lambda m: m.params, tp, tangent_p)
        return jax.jvp(lambda p, x: outputs(p, static, x), (params, xs), (tp, tangent_x))[1]

    def vjp(module):
        params, static = eqx.partition(module, eqx.is_inexact_array)
        _, pullback = jax.vjp(lambda p, x: outputs(p, static, x), params, xs)
        cot_p, cot_x = pullback(ys)
        return cot_p.params, cot_x

    def rg(jacobian):
        def run(module):
            return modopt.riemannian_gradient(
                network(module), modopt.losses.squared_error, net_in, net_out,
                output_metric=modopt.metrics.Identity(), mass=1e-2, jacobian=jacobian,
            )
        return run

    return {
        "value": value, "jvp": jvp, "vjp": vjp,
        "rg forward": rg(modopt.Forward()), "rg reverse": rg(modopt.Reverse()),
        "rg auto": rg(modopt.AutoJacobian()),
    }


def max_rel(a, b) -> float:
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = np.max(np.abs(y)) if y.size else 0.0
        worst = max(worst, float(np.max(np.abs(x - y)) / scale) if scale > 0 else 0.0)
    return worst


def main():
    start = time.perf_counter()
    function = casadi_function()
    twin = JaxLayer(params0())
    by_jacobian = CasadiModule(function, params0(), input_name="x")
    directional = {  # forward(1) for forward-mode rows, reverse(1) for the others
        mode: CasadiModule(function, params0(), input_name="x", derivatives="directional",
                           sensitivity=mode)
        for mode in ("forward", "auto")
    }

    # Floors for reading small times: a trivial jitted op, and a trivial pure_callback.
    probe = jnp.ones((256, 4), DTYPE)
    floor = time_jitted(jax.jit(lambda v: v * 2.0), probe, repeats=200)
    callback_floor = time_jitted(jax.jit(lambda v: jax.pure_callback(
        lambda a: np.asarray(a) * 2.0, jax.ShapeDtypeStruct(v.shape, v.dtype), v)), probe,
        repeats=200)

    meta = machine_info(jnp.dtype(DTYPE))
    meta.update(command=command_line(), repeats_min=ARGS.repeats, min_total_s=MIN_TOTAL_S,
                dispatch_floor_median_s=floor["median_s"],
                pure_callback_floor_median_s=callback_floor["median_s"],
                casadi_version=casadi.__version__,
                notes="y = sin(W x + b), x: 4, W: 3x4, b: 3 (15 parameters); network "
                      "Linear(3,4), tanh, module, Linear(3,2); squared error, Identity "
                      "metric, mass 1e-2. Each jitted function is compiled by a first "
                      "(untimed) call; then >= repeats timed calls (more until "
                      "min_total_s), median reported.")

    rows = []
    for batch in ARGS.batches:
        ops = operations(batch)
        for name, op in ops.items():
            fn = eqx.filter_jit(op)
            t_jax = time_jitted(fn, twin, repeats=ARGS.repeats, min_total_s=MIN_TOTAL_S)
            t_cas = time_jitted(fn, by_jacobian, repeats=ARGS.repeats, min_total_s=MIN_TOTAL_S)
            ref = t_jax.pop("output")
            row = dict(
                op=name, batch=batch,
                jax_median_s=t_jax["median_s"], jax_compile_s=t_jax["compile_s"],
                jax_all_s=t_jax["all"],
                casadi_median_s=t_cas["median_s"], casadi_compile_s=t_cas["compile_s"],
                casadi_all_s=t_cas["all"],
                ratio=t_cas["median_s"] / t_jax["median_s"],
                rel_diff=max_rel(t_cas.pop("output"), ref),
            )
            if name != "value":
                module = directional["forward" if name in ("jvp", "rg forward") else "auto"]
                t_dir = time_jitted(fn, module, repeats=ARGS.repeats,
                                    min_total_s=MIN_TOTAL_S)
                row.update(directional_median_s=t_dir["median_s"],
                           directional_compile_s=t_dir["compile_s"],
                           directional_all_s=t_dir["all"],
                           directional_ratio=t_dir["median_s"] / t_jax["median_s"],
                           directional_rel_diff=max_rel(t_dir.pop("output"), ref))
            rows.append(row)
            extra = (f"  directional {row['directional_median_s'] * 1e3:8.3f} ms"
                     if "directional_median_s" in row else "")
            print(f"batch {batch:4d} {name:11s} jax {row['jax_median_s'] * 1e3:8.3f} ms  "
                  f"casadi {row['casadi_median_s'] * 1e3:8.3f} ms  ratio {row['ratio']:7.1f}"
                  f"{extra}  rel {max(row['rel_diff'], row.get('directional_rel_diff', 0)):.1e}"
                  f"  [{time.perf_counter() - start:.0f}s]", flush=True)
    meta["wall_s"] = time.perf_counter() - start
    worst = max(max(r["rel_diff"], r.get("directional_rel_diff", 0.0)) for r in rows)
    meta["max_rel_diff"] = worst

    def ms(s):
        return f"{s * 1e3:,.3f}"

    table = markdown_table(
        ["op", "batch", "JAX ms", "CasADi ms", "CasADi / JAX", "CasADi directional ms",
         "directional / JAX", "compile JAX / CasADi s"],
        [[r["op"], r["batch"], ms(r["jax_median_s"]), ms(r["casadi_median_s"]),
          f"{r['ratio']:,.1f}x",
          ms(r["directional_median_s"]) if "directional_median_s" in r else "-",
          f"{r['directional_ratio']:,.1f}x" if "directional_ratio" in r else "-",
          f"{r['jax_compile_s']:.2f} / {r['casadi_compile_s']:.2f}"] for r in rows],
    )
    md = "\n".join([
        "# CasADi module overhead vs a JAX-native twin (float64)",
        "",
        "Command (from the repository root):",
        "",
        f"    {meta['command']}",
        "",
        f"Date {meta['date_utc']}, jax {meta['jax_version']}, casadi {casadi.__version__}, "
        f"{meta['cpu_count']} CPUs, BLAS/XLA threads: {meta['threads']}, load average at "
        f"start {meta['loadavg_start'][0]:.2f} (machine shared, timings noisy).",
        "",
        "Module ``y = sin(W x + b)`` (x: 4, W: 3x4, b: 3) as a `CasadiModule` of an SX "
        "Function and written in jax.numpy. `value`: the batch of outputs; `jvp`/`vjp`: "
        "one JVP / VJP of the batch of outputs in (parameters, inputs); `rg <mode>`: "
        "`riemannian_gradient` of `Linear(3,4), tanh, module, Linear(3,2)` with "
        "`Forward()`, `Reverse()`, `AutoJacobian()`. Jitted; medians of >= "
        f"{ARGS.repeats} timed calls after a compiling warm-up call. "
        "`CasADi` = `derivatives=\"jacobian\"` (default), `directional` = "
        "`derivatives=\"directional\"` (`forward(1)` / `reverse(1)`).",
        "",
        f"Floors: trivial jitted op {floor['median_s'] * 1e6:.1f} us; trivial jitted "
        f"`jax.pure_callback` {callback_floor['median_s'] * 1e6:.1f} us (every CasADi "
        "evaluation pays at least this).",
        "",
        table,
        "",
        f"Largest relative difference CasADi vs JAX over all results: {worst:.1e}.",
        "",
    ])
    write_results("bench_casadi_overhead", rows, meta, md)


if __name__ == "__main__":
    main()
