"""Shared timing and result-writing helpers for the modopt benchmarks.

Timing protocol (every benchmark): the function under test is jitted; it is called
once and blocked on to compile; then it is called `repeats` more times, each call
timed separately with ``jax.block_until_ready``, and the median is reported.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def configure_threads(threads: int | None) -> None:
    """Limit BLAS/LAPACK and XLA CPU threads; must run before jax is imported.

    On this shared 2-core machine a concurrent process makes multi-threaded BLAS
    (busy-waiting worker threads) 5-30x slower and erratic; one thread is stable.
    ``None`` leaves the defaults.
    """
    if "jax" in sys.modules:
        raise RuntimeError("configure_threads must be called before jax is imported")
    os.environ["MODOPT_BENCH_THREADS"] = "default" if threads is None else str(threads)
    if threads is None:
        return
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    flags = os.environ.get("XLA_FLAGS", "")
    eigen = "true" if threads > 1 else "false"
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={threads}"
    ).strip()


def time_jitted(fn, *args, repeats: int = 7, min_total_s: float = 0.0, max_repeats: int = 5000,
                compile_call: bool = True) -> dict:
    """Time a jitted `fn(*args)`.

    - The first call (compile + one execution) is timed on its own: `first_call_s`.
      `compile_s` is ``first_call_s - median_s`` (the execution part removed; an
      estimate, since compile and run cannot be separated from outside).
    - With ``compile_call=False`` (plain ``jax.jit`` functions whose single run is very
      expensive), compilation is done ahead of time with ``fn.lower(*args).compile()``
      and timed exactly; no untimed execution is spent, every execution is timed.
    - Then `repeats` timed calls (at least; more until `min_total_s` is spent, up to
      `max_repeats`, for fast operations). Returns ``dict(compile_s, median_s, all,
      first_call_s, output)``.
    """
    import jax

    if compile_call:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        first = time.perf_counter() - t0
        call = fn
    else:
        t0 = time.perf_counter()
        call = fn.lower(*args).compile()
        first = None
        compile_exact = time.perf_counter() - t0
        out = None
    times = []
    spent = 0.0
    while len(times) < repeats or (spent < min_total_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(call(*args))
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    median = statistics.median(times)
    compile_s = max(first - median, 0.0) if compile_call else compile_exact
    return dict(compile_s=compile_s, median_s=median, all=times, first_call_s=first,
                repeats=len(times), output=out)


def machine_info(dtype) -> dict:
    import jax
    import jaxlib
    import numpy as np

    return dict(
        jax_version=jax.__version__,
        jaxlib_version=jaxlib.__version__,
        numpy_version=np.__version__,
        python=sys.version.split()[0],
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        devices=[str(d) for d in jax.devices()],
        dtype=str(dtype),
        x64_enabled=bool(jax.config.jax_enable_x64),
        date_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        loadavg_start=list(os.getloadavg()),
        threads=os.environ.get("MODOPT_BENCH_THREADS", "default"),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summarise_samples(rows: list[dict]) -> list[dict]:
    """Replace each raw list of timings (``all_s``, ``*_all_s``) by its quantiles."""
    out = []
    for row in rows:
        row = dict(row)
        for key in [k for k in row if k == "all_s" or k.endswith("_all_s")]:
            samples = np.asarray(row.pop(key), dtype=float)
            quantiles = np.quantile(samples, [0.0, 0.1, 0.5, 0.9, 1.0]) if samples.size else []
            row[key[: -len("all_s")] + "quantiles_s"] = dict(
                zip(["min", "p10", "median", "p90", "max"], map(float, quantiles))
            )
        out.append(row)
    return out


def write_results(name: str, rows: list[dict], meta: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` (rows + meta) and ``results/<name>.md``; print the md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, loadavg_end=list(os.getloadavg()))
    json_path = RESULTS / f"{name}.json"
    md_path = RESULTS / f"{name}.md"
    rows = summarise_samples(rows)
    json_path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2, default=float) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return json_path, md_path


def command_line() -> str:
    """The command that is running, relative to the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), Path(__file__).resolve().parent.parent)
    return " ".join([".venv/bin/python", script] + sys.argv[1:])
