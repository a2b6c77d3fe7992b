"""Run ngspice as an independent reference for ``modopt.circuits``.

Nothing here imports modopt: a netlist goes to the ``ngspice`` binary in batch mode and the
vectors it writes with ``wrdata`` come back as numpy arrays.

``run_ngspice(netlist, analyses, probes, workdir)`` returns one dict per analysis::

    {"op":   {"v_out": array([..]), "i_v1": array([..])},              # one row, shape (1,)
     "dc":   {"sweep_v": array, "v_out": array, ...},                  # "sweep_i" for an I source
     "ac":   {"frequency_hz": array, "v_out": complex array, ...},
     "tran": {"time_s": array, "v_out": array, "i_l1": array, ...}}

Analysis keys are the analysis type (``op``, ``dc``, ``ac``, ``tran``); a second analysis of
the same type gets ``tran_2`` and so on.  Probe keys: ``v(out)`` -> ``v_out``,
``v(a,b)`` -> ``v_a_b``, ``v(x1.n2)`` -> ``v_x1_n2``, ``i(v1)`` -> ``i_v1``,
``i(l1)`` / ``@l1[i]`` -> ``i_l1``.  A probe ``"name=expr"`` is evaluated by ngspice's
``let name = expr`` and returned under ``name`` (e.g. ``"id=-i(v1)"``).

Conventions of ngspice 39 (see ``tests/data/circuits/README.md``): ``i(vname)`` is the branch
current flowing INTO the + terminal of the source (through the source from + to -), so a
source delivering power has a negative current; ``i(l1)`` is the inductor current from its
first to its second node and works directly in op, dc, ac and tran.  ``@l1[i]`` works in op
and tran only when saved (``run_ngspice`` adds ``.save all @l1[i]`` itself; without it
ngspice silently repeats the final value) and not in ac; a 0 V sense source always works.

``python tests/ngspice_reference.py`` regenerates the CSVs of the project's own netlists in
``tests/data/circuits/own/`` and compares ``run_ngspice`` with the shared ngspice results in
``tests/data/circuits/shared/``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

NGSPICE = shutil.which("ngspice")

DEFAULT_OPTIONS = (
    ".options reltol=1e-6 abstol=1e-15 vntol=1e-9 chgtol=1e-18 trtol=1 gmin=1e-12 "
    "method=trap maxord=2 temp=27 tnom=27"
)

HERE = Path(__file__).resolve().parent
CIRCUITS = HERE / "data" / "circuits"
OWN = CIRCUITS / "own"
SHARED = CIRCUITS / "shared"

_AXIS = {"tran": "time_s", "ac": "frequency_hz"}
_SWEEP_AXIS = {"v": "sweep_v", "i": "sweep_i", "r": "sweep_ohm"}

# lines of ngspice output that mean the run did not do what was asked
_ERROR_PATTERNS = re.compile(
    r"^\s*error\b|\berror:|\berror on line\b|timestep too small|simulation interrupted"
    r"|aborted|no such vector|unknown subckt|could not find|fatal",
    re.IGNORECASE,
)
# warnings that mean the circuit is badly conditioned (raised when strict=True)
_CONDITIONING_PATTERNS = re.compile(
    r"singular matrix|gmin stepping failed|source stepping failed|not available",
    re.IGNORECASE,
)


# ----------------------------------------------------------------------------- netlist


def prepare_netlist(netlist: str) -> str:
    """Netlist text without ``.control ... .endc`` and ``.end``, with ``.options`` ensured."""
    out: list[str] = []
    in_control = False
    for line in netlist.splitlines():
        s = line.strip().lower()
        if in_control:
            if re.match(r"\.endc\b", s):
                in_control = False
            continue
        if re.match(r"\.control\b", s):
            in_control = True
            continue
        if s == ".end" or s.startswith(".end ") or s.startswith(".end\t"):
            continue
        out.append(line.rstrip())
    while out and not out[-1].strip():
        out.pop()
    if not any(re.match(r"\s*\.opt(ion|ions)?\b", ln, re.IGNORECASE) for ln in out):
        out.append(DEFAULT_OPTIONS)
    return "\n".join(out) + "\n"


def probe_key(probe: str) -> str:
    """Normalised column name of a probe: ``v(out)`` -> ``v_out``, ``@l1[i]`` -> ``i_l1``."""
    p = probe.strip()
    if "=" in p:
        return p.split("=", 1)[0].strip().lower()
    m = re.fullmatch(r"@(\w+)\[i\]", p, re.IGNORECASE)
    if m:
        return "i_" + m.group(1).lower()
    m = re.fullmatch(r"([vi])\((.*)\)", p, re.IGNORECASE)
    if m:
        inner = re.sub(r"[^0-9a-z]+", "_", m.group(2).lower()).strip("_")
        return f"{m.group(1).lower()}_{inner}"
    return re.sub(r"[^0-9a-z]+", "_", p.lower()).strip("_")


def _analysis_type(command: str) -> str:
    kind = command.split()[0].lower()
    if kind not in ("op", "dc", "ac", "tran"):
        raise ValueError(f"unsupported analysis {command!r} (op, dc, ac, tran)")
    return kind


def _axis_name(command: str) -> str | None:
    kind = _analysis_type(command)
    if kind == "op":
        return None
    if kind == "dc":
        src = command.split()[1].lower()
        if src == "temp":
            return "sweep_temp"
        return _SWEEP_AXIS.get(src[0], "sweep")
    return _AXIS[kind]


# ----------------------------------------------------------------------------- running


def run_ngspice(
    netlist: str, analyses: list[str], probes: list[str], workdir, strict: bool = True
) -> dict:
    """Simulate ``netlist`` with ngspice and return ``{analysis: {column: array}}``.

    netlist:  SPICE text; a ``.control`` block and ``.end`` are stripped, the default tight
              ``.options`` line is added when the netlist has none.
    analyses: ngspice interactive commands, e.g. ``"op"``, ``"dc V1 -1 1 0.1"``,
              ``"ac dec 20 10 1e5"``, ``"tran 1u 1m 0 0.1u uic"``.
    probes:   vectors written for every analysis: ``"v(out)"``, ``"v(a,b)"``, ``"i(v1)"``,
              ``"i(l1)"``, ``"@l1[i]"`` or ``"name=expression"``.
    workdir:  directory for the netlist and data files (e.g. a pytest ``tmp_path``).
    strict:   also raise on ngspice's conditioning warnings (singular matrix, failed gmin or
              source stepping, a vector that is not available).

    Real analyses give float arrays, ``ac`` gives complex arrays.  ``op`` values have shape
    (1,).  Transients with ``uic`` have no row at t = 0 (ngspice writes none).
    Raises RuntimeError (with the tail of ngspice's output) when ngspice is missing, fails,
    prints an error or writes no data.  The generated netlist and ngspice's output stay in
    ``workdir`` as ``ngref.cir`` and ``ngref.log``.
    """
    if NGSPICE is None:
        raise RuntimeError("ngspice not found on PATH")
    if not analyses:
        raise ValueError("no analyses given")
    if not probes:
        raise ValueError("no probes given")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    keys = [probe_key(p) for p in probes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"probe keys collide: {keys}")
    lets = [p.split("=", 1) for p in probes if "=" in p]
    vecs = [p.split("=", 1)[0].strip() if "=" in p else p.strip() for p in probes]

    control = [
        ".control",
        "set wr_singlescale",
        "set wr_vecnames",
        "option numdgt=15",
    ]
    names: list[str] = []
    counts: dict[str, int] = {}
    for idx, command in enumerate(analyses):
        kind = _analysis_type(command)
        counts[kind] = counts.get(kind, 0) + 1
        names.append(kind if counts[kind] == 1 else f"{kind}_{counts[kind]}")
        datafile = workdir / f"ngref_{idx}.dat"
        if datafile.exists():
            datafile.unlink()
        control.append(command)
        control += [f"let {n.strip()} = {e.strip()}" for n, e in lets]
        if kind == "ac":
            # explicit real and imaginary parts: two columns per probe even when a
            # "name=expression" probe is real valued (ngspice 39 returns imag(x) = x for a
            # real vector x, so the probe is first made complex by adding 0*frequency)
            cols = []
            for j, vec in enumerate(vecs):
                control.append(f"let ngrefre{j} = real(({vec}) + 0*frequency)")
                control.append(f"let ngrefim{j} = imag(({vec}) + 0*frequency)")
                cols += [f"ngrefre{j}", f"ngrefim{j}"]
        else:
            cols = vecs
        control.append(f"wrdata {datafile.name} " + " ".join(cols))
    control += ["quit", ".endc", ".end"]

    # device-internal vectors such as @l1[i] are only kept per time point when saved;
    # without a .save ngspice silently returns the final value for every row
    internal = sorted({m.lower() for p in probes for m in re.findall(r"@\w+\[\w+\]", p)})
    save = [".save all " + " ".join(internal)] if internal else []
    text = prepare_netlist(netlist) + "\n".join(save + control) + "\n"
    cir = workdir / "ngref.cir"
    cir.write_text(text)
    try:
        proc = subprocess.run(
            [NGSPICE, "-b", cir.name], cwd=workdir, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"ngspice timed out on {cir}") from exc
    log = proc.stdout + "\n" + proc.stderr
    (workdir / "ngref.log").write_text(log)

    def fail(why: str):
        tail = "\n".join(log.strip().splitlines()[-40:])
        raise RuntimeError(f"ngspice {why} ({cir}):\n{tail}")

    if proc.returncode != 0:
        fail(f"exited with code {proc.returncode}")
    bad = [ln for ln in log.splitlines() if _ERROR_PATTERNS.search(ln)]
    if strict:
        bad += [ln for ln in log.splitlines() if _CONDITIONING_PATTERNS.search(ln)]
    if bad:
        fail("reported an error: " + bad[0].strip())

    results: dict[str, dict[str, np.ndarray]] = {}
    for idx, (command, name) in enumerate(zip(analyses, names)):
        datafile = workdir / f"ngref_{idx}.dat"
        if not datafile.exists() or datafile.stat().st_size == 0:
            fail(f"wrote no data for {command!r}")
        results[name] = _parse_wrdata(datafile, command, keys, fail)
    return results


def _parse_wrdata(path: Path, command: str, keys: list[str], fail) -> dict[str, np.ndarray]:
    lines = path.read_text().splitlines()
    rows = [ln.split() for ln in lines[1:] if ln.strip()]  # line 0: vector names
    if not rows:
        fail(f"wrote an empty table for {command!r}")
    data = np.array(rows, dtype=float)
    kind = _analysis_type(command)
    n = len(keys)
    # every analysis has one scale column first (for op it is just the plot's first vector)
    expected = 1 + (2 * n if kind == "ac" else n)
    if data.shape[1] != expected:
        fail(f"wrote {data.shape[1]} columns for {command!r}, expected {expected}")
    out: dict[str, np.ndarray] = {}
    axis = _axis_name(command)
    if axis is not None:
        out[axis] = data[:, 0].copy()
    for j, key in enumerate(keys):
        if kind == "ac":
            out[key] = data[:, 1 + 2 * j] + 1j * data[:, 2 + 2 * j]
        else:
            out[key] = data[:, 1 + j].copy()
    return out


# ----------------------------------------------------------------------------- CSV files


def write_csv(table: dict[str, np.ndarray], path) -> None:
    """Write one analysis result; complex columns become ``<key>_re`` and ``<key>_im``."""
    cols: list[str] = []
    arrays: list[np.ndarray] = []
    for key, val in table.items():
        val = np.asarray(val)
        if np.iscomplexobj(val):
            cols += [f"{key}_re", f"{key}_im"]
            arrays += [val.real, val.imag]
        else:
            cols.append(key)
            arrays.append(val.astype(float))
    mat = np.column_stack(arrays)
    with open(path, "w") as fh:
        fh.write(",".join(cols) + "\n")
        for row in mat:
            fh.write(",".join(f"{x:.15e}" for x in row) + "\n")


def read_csv(path) -> dict[str, np.ndarray]:
    """Read a CSV written by :func:`write_csv` (or a shared one); ``_re``/``_im`` pairs
    are joined back into complex columns."""
    with open(path) as fh:
        header = fh.readline().strip().split(",")
        rows = [ln.strip().split(",") for ln in fh if ln.strip()]
    mat = np.array(rows, dtype=float).reshape(len(rows), len(header))
    out: dict[str, np.ndarray] = {}
    for j, col in enumerate(header):
        if col.endswith("_im") and col[:-3] + "_re" in header:
            continue
        if col.endswith("_re") and col[:-3] + "_im" in header:
            out[col[:-3]] = mat[:, j] + 1j * mat[:, header.index(col[:-3] + "_im")]
        else:
            out[col] = mat[:, j]
    return out


def load_case(name: str) -> tuple[str, dict]:
    """Netlist text and sidecar (``<name>.json``) of an own case in ``own/``."""
    netlist = (OWN / f"{name}.cir").read_text()
    spec = json.loads((OWN / f"{name}.json").read_text())
    return netlist, spec


def own_cases() -> list[str]:
    return sorted(p.stem for p in OWN.glob("*.cir"))


def load_reference(name: str) -> dict[str, dict[str, np.ndarray]]:
    """Stored ngspice results of an own case, ``{analysis: {column: array}}``."""
    _, spec = load_case(name)
    return {a: read_csv(OWN / f"{name}.{a}.csv") for a in analysis_names(spec["analyses"])}


def analysis_names(analyses: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for command in analyses:
        kind = _analysis_type(command)
        counts[kind] = counts.get(kind, 0) + 1
        names.append(kind if counts[kind] == 1 else f"{kind}_{counts[kind]}")
    return names


def run_case(name: str, workdir) -> dict[str, dict[str, np.ndarray]]:
    """Run an own case through ngspice with the analyses and probes of its sidecar."""
    netlist, spec = load_case(name)
    return run_ngspice(netlist, spec["analyses"], spec["probes"], workdir)


# ----------------------------------------------------------------------------- regenerate

# transient CSVs keep every k-th accepted ngspice step (never interpolated, first and last
# rows always kept) so that no stored transient has more than this many rows
MAX_CSV_ROWS = 2000


def thin(table: dict[str, np.ndarray], max_rows: int = MAX_CSV_ROWS) -> dict[str, np.ndarray]:
    n = len(next(iter(table.values())))
    k = -(-n // max_rows)
    if k <= 1:
        return table
    idx = np.arange(0, n, k)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return {key: val[idx] for key, val in table.items()}


def regenerate_own(verbose: bool = True) -> None:
    import time

    for name in own_cases():
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = run_case(name, tmp)
            dt = time.perf_counter() - t0
        parts = []
        for analysis, table in res.items():
            n = len(next(iter(table.values())))
            if analysis.startswith("tran"):
                table = thin(table)
            write_csv(table, OWN / f"{name}.{analysis}.csv")
            m = len(next(iter(table.values())))
            parts.append(f"{analysis}:{m} rows" + (f" (of {n})" if m != n else ""))
        if verbose:
            print(f"  {name:24s} {dt:5.2f} s  " + ", ".join(parts))


# shared cases: analyses, probes, and how each shared CSV column is formed from the result
def _ac_cols(prefix_key: str, suffix: str = "") -> dict:
    return {
        f"mag{suffix}": lambda r, k=prefix_key: np.abs(r[k]),
        f"phase{suffix}_deg": lambda r, k=prefix_key: np.degrees(np.unwrap(np.angle(r[k]))),
        f"re{suffix}": lambda r, k=prefix_key: r[k].real,
        f"im{suffix}": lambda r, k=prefix_key: r[k].imag,
    }


def _shared_specs() -> dict:
    ident = lambda k: (lambda r: r[k])  # noqa: E731
    return {
        "divider_dc": dict(
            analyses=["op", "dc V1 -10 10 0.5"],
            probes=["v(in)", "v(mid)", "v(out)", "i(v1)"],
            files={
                "op.csv": ("op", {c: ident(c) for c in ["v_in", "v_mid", "v_out", "i_v1"]}),
                "dc_sweep.csv": (
                    "dc",
                    {c: ident(c) for c in ["sweep_v", "v_mid", "v_out", "i_v1"]},
                ),
            },
        ),
        "rc_lowpass": dict(
            analyses=["ac dec 50 10 1e6", "tran 1u 1m 0 0.1u uic"],
            probes=["v(out)"],
            files={
                "ac.csv": ("ac", {"frequency_hz": ident("frequency_hz"), **_ac_cols("v_out")}),
                "tran.csv": ("tran", {"time_s": ident("time_s"), "v_out": ident("v_out")}),
            },
        ),
        "rlc_series": dict(
            analyses=["ac dec 100 100 1e4", "tran 1u 10m 0 1u uic"],
            probes=["v(b)", "i(l1)"],
            files={
                "ac.csv": (
                    "ac",
                    {
                        "frequency_hz": ident("frequency_hz"),
                        **_ac_cols("v_b", "_c"),
                        "i_mag": lambda r: np.abs(r["i_l1"]),
                        "i_phase_deg": lambda r: np.degrees(np.unwrap(np.angle(r["i_l1"]))),
                    },
                ),
                "tran.csv": (
                    "tran",
                    {"time_s": ident("time_s"), "v_b": ident("v_b"), "i_l": ident("i_l1")},
                ),
            },
        ),
        "butter3_ac": dict(
            analyses=["ac dec 100 10 1e5"],
            probes=["v(n2)"],
            files={
                "ac.csv": (
                    "ac",
                    {
                        "frequency_hz": ident("frequency_hz"),
                        **_ac_cols("v_n2"),
                        "s21_db": lambda r: 20 * np.log10(np.abs(2 * r["v_n2"])),
                    },
                )
            },
        ),
        "diode_iv": dict(
            analyses=["dc V1 -2 1 0.005"],
            probes=["i(v1)"],
            files={
                "dc_sweep.csv": (
                    "dc",
                    {"sweep_v": ident("sweep_v"), "id": lambda r: -r["i_v1"]},
                )
            },
        ),
        "diode_halfwave": dict(
            analyses=["tran 1u 5m 0 0.5u"],
            probes=["v(in)", "v(out)"],
            files={
                "tran.csv": (
                    "tran",
                    {"time_s": ident("time_s"), "v_in": ident("v_in"), "v_out": ident("v_out")},
                )
            },
        ),
        "controlled_sources": dict(
            analyses=["op", "dc V1 -2 2 0.1", "ac dec 50 10 1e6"],
            probes=["v(a)", "v(b)", "v(c)", "v(d)", "i(v1)"],
            files={
                "op.csv": ("op", {c: ident(c) for c in ["v_a", "v_b", "v_c", "v_d", "i_v1"]}),
                "dc_sweep.csv": (
                    "dc",
                    {c: ident(c) for c in ["sweep_v", "v_a", "v_b", "v_c", "v_d"]},
                ),
                "ac.csv": ("ac", {"frequency_hz": ident("frequency_hz"), **_ac_cols("v_d", "_d")}),
            },
        ),
    }


def compare_shared(root=SHARED, verbose: bool = True) -> dict[str, float]:
    """Re-run the shared netlists (control blocks stripped) and return, per case/file/column,
    max |ours - theirs| / max |theirs|.  Transient rows are matched by time (the shared files
    keep every k-th accepted step of the same run)."""
    root = Path(root)
    worst: dict[str, float] = {}
    for case, spec in _shared_specs().items():
        netlist = (root / case / f"{case}.cir").read_text()
        with tempfile.TemporaryDirectory() as tmp:
            res = run_ngspice(netlist, spec["analyses"], spec["probes"], tmp)
        for fname, (analysis, cols) in spec["files"].items():
            ref = read_csv(root / case / fname)
            table = res[analysis]
            rows = slice(None)
            if "time_s" in ref:
                idx = np.searchsorted(table["time_s"], ref["time_s"])
                idx = np.clip(idx, 0, len(table["time_s"]) - 1)
                ok = np.abs(table["time_s"][idx] - ref["time_s"]) <= 1e-12 * ref["time_s"].max()
                if not ok.all():
                    raise AssertionError(f"{case}/{fname}: {np.sum(~ok)} time rows not matched")
                rows = idx
            elif len(next(iter(table.values()))) != len(next(iter(ref.values()))):
                raise AssertionError(f"{case}/{fname}: row counts differ")
            for col, fn in cols.items():
                ours = np.asarray(fn(table))[rows]
                theirs = ref[col]
                scale = np.max(np.abs(theirs)) or 1.0
                err = float(np.max(np.abs(ours - theirs)) / scale)
                worst[f"{case}/{fname}/{col}"] = err
            if verbose:
                errs = {c: worst[f"{case}/{fname}/{c}"] for c in cols}
                top = max(errs, key=errs.get)
                print(
                    f"  {case:20s} {fname:14s} {len(ref[next(iter(ref))]):5d} rows  "
                    f"max rel diff {errs[top]:.2e} ({top})"
                )
    return worst


if __name__ == "__main__":
    print(f"ngspice: {NGSPICE}")
    print("regenerating own references in", OWN)
    regenerate_own()
    print("comparing run_ngspice with the shared references in", SHARED)
    worst = compare_shared()
    print(f"worst relative difference over all shared columns: {max(worst.values()):.2e}")
