"""modopt.circuits against ngspice 39 on the seven shared netlists and the project's own.

Each case runs the analyses of its sidecar through `Circuit` and compares with ngspice:
live (ngspice in batch mode, through `tests/ngspice_reference.py`; required in CI, skipped
with the reason elsewhere) and with the stored ngspice CSVs (always). Tolerances, as the
issue sets them: AC and linear DC 1e-9 relative, nonlinear DC 1e-5, transients 1e-4 of
the peak.
"""

import os
import warnings

import jax
import numpy as np
import pytest
from ngspice_reference import (
    NGSPICE,
    OWN,
    SHARED,
    analysis_names,
    load_case,
    read_csv,
    run_ngspice,
)

from modopt.circuits import Circuit

jax.config.update("jax_enable_x64", True)

SHARED_SPECS = {
    "divider_dc": (["op", "dc V1 -10 10 0.5"], ["v(in)", "v(mid)", "v(out)", "i(v1)"]),
    "rc_lowpass": (["ac dec 50 10 1e6", "tran 1u 1m 0 0.1u uic"], ["v(out)"]),
    "rlc_series": (["ac dec 100 100 1e4", "tran 1u 10m 0 1u uic"], ["v(a)", "v(b)", "i(v1)"]),
    "butter3_ac": (["ac dec 100 10 1e5"], ["v(n1)", "v(n2)"]),
    "diode_iv": (["dc V1 -2 1 0.005"], ["v(a)", "i(v1)"]),
    "diode_halfwave": (["tran 1u 5m 0 0.5u"], ["v(in)", "v(out)"]),
    "controlled_sources": (["op", "dc V1 -2 2 0.1", "ac dec 50 10 1e6"],
                           ["v(a)", "v(b)", "v(c)", "v(d)", "i(v1)"]),
}


def _case(name):
    if name in SHARED_SPECS:
        netlist = (SHARED / name / f"{name}.cir").read_text()
        analyses, probes = SHARED_SPECS[name]
        return netlist, analyses, probes
    netlist, spec = load_case(name)
    return netlist, spec["analyses"], spec["probes"]


CASES = sorted(SHARED_SPECS) + sorted(p.stem for p in OWN.glob("*.cir"))


def _simulate(circuit: Circuit, command: str, axis: np.ndarray) -> dict:
    words = command.lower().split()
    if words[0] == "op":
        return {k: np.atleast_1d(np.asarray(v)) for k, v in circuit.op().items()}
    if words[0] == "dc":
        return {k: np.asarray(v) for k, v in circuit.dc_sweep(words[1], axis).items()}
    if words[0] == "ac":
        return {k: np.asarray(v) for k, v in circuit.ac(axis).items()}
    return {k: np.asarray(v) for k, v in circuit.transient(axis, uic="uic" in words).items()}


def _axis_name(key, table):
    kind = key.split("_")[0]
    return {"dc": next((k for k in table if k.startswith("sweep_")), None),
            "ac": "frequency_hz", "tran": "time_s"}.get(kind)


def _simulate_all(circuit, analyses, references):
    """Our results for every analysis, on the axes of `references`."""
    ours = {}
    for command, key in zip(analyses, analysis_names(analyses)):
        axis_name = _axis_name(key, references[key])
        axis = references[key].get(axis_name) if axis_name else None
        result = _simulate(circuit, command, axis)
        ours[key] = {k.replace(".", "_"): v for k, v in result.items()}
    return ours


def _errors(name, circuit, ours, references) -> list[str]:
    nonlinear = bool(circuit.topology.diodes or circuit.topology.b_sources)
    failures = []
    for key, reference in references.items():
        kind = key.split("_")[0]
        axis_name = _axis_name(key, reference)
        rows = slice(None)
        if axis_name and len(reference[axis_name]) != len(next(iter(ours[key].values()))):
            # The stored tables keep every k-th of ngspice's accepted steps.
            rows = np.searchsorted(ours_axis := ours[key]["__axis__"], reference[axis_name])
            np.testing.assert_allclose(ours_axis[rows], reference[axis_name], rtol=1e-12)
        tolerance = {"ac": 1e-9, "op": 1e-5 if nonlinear else 1e-9,
                     "dc": 1e-5 if nonlinear else 1e-9, "tran": 1e-4}[kind]
        for probe, expected in reference.items():
            if probe == axis_name:
                continue
            assert probe in ours[key], f"{name} {key}: no {probe} among {sorted(ours[key])}"
            got = ours[key][probe][rows]
            error = np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-12)
            if not error <= tolerance:
                failures.append(f"{name} {key} {probe}: {error:.2e} > {tolerance:g}")
    return failures


def _stored(name, analyses):
    if name not in SHARED_SPECS:
        return {key: read_csv(OWN / f"{name}.{key}.csv") for key in analysis_names(analyses)}
    results = {}
    for key in analysis_names(analyses):
        kind = key.split("_")[0]
        file = {"op": "op", "dc": "dc_sweep", "ac": "ac", "tran": "tran"}[kind]
        results[key] = _shared_table(name, file, kind)
    return results


@pytest.mark.parametrize("name", CASES)
def test_agrees_with_ngspice(name, tmp_path):
    """Simulate once, on the axes of a live ngspice run when there is one (required in
    CI), and compare with it and with the stored results; without ngspice, on the
    stored axes only."""
    netlist, analyses, probes = _case(name)
    circuit = Circuit.from_netlist(netlist)
    stored = _stored(name, analyses)
    if NGSPICE is None and os.environ.get("CI"):
        pytest.fail("ngspice is not installed; .ci/run installs it with apt-get.")
    live = None if NGSPICE is None else run_ngspice(netlist, analyses, probes, tmp_path)
    axes = live if live is not None else stored
    ours = _simulate_all(circuit, analyses, axes)
    for key in ours:
        axis_name = _axis_name(key, axes[key])
        if axis_name:
            ours[key]["__axis__"] = np.asarray(axes[key][axis_name])
    failures = _errors(name, circuit, ours, stored)
    if live is not None:
        failures += [f"live: {f}" for f in _errors(name, circuit, ours, live)]
    assert not failures, "\n".join(failures)
    if live is None:
        warnings.warn("compared with the stored ngspice results only: ngspice is not "
                      "installed here (apt-get install ngspice) for the live comparison.",
                      stacklevel=2)


def _shared_table(name, file, kind):
    raw = np.genfromtxt(SHARED / name / f"{file}.csv", delimiter=",", names=True)
    table = {}
    for column in raw.dtype.names:
        if column in ("time_s", "frequency_hz", "sweep_v"):
            table[column] = np.atleast_1d(raw[column])
        elif column == "i_l":  # rlc_series: the inductor current
            table["i_l1"] = np.atleast_1d(raw[column])
        elif column.startswith(("v_", "i_")) and column not in ("i_mag", "i_phase_deg"):
            table[column] = np.atleast_1d(raw[column])
        elif column == "id":  # diode_iv writes the diode current, -i(v1)
            table["i_v1"] = -np.atleast_1d(raw[column])
    if kind == "ac":  # re/im columns of the probed node
        for column in raw.dtype.names:
            if column.startswith("re"):
                node = _AC_NODES[name]
                imag = "im" + column[2:]
                table[node] = raw[column] + 1j * raw[imag]
    return table


_AC_NODES = {"rc_lowpass": "v_out", "rlc_series": "v_b", "butter3_ac": "v_n2",
             "controlled_sources": "v_d"}
