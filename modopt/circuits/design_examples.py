"""The circuit design examples run by ``modopt run examples/circuits/*.toml``:

- ``butterworth_ladder``: a 5th-order doubly terminated LC ladder, from element values
  drawn 50 % off, fitted to the Butterworth response.
- ``diode_bias``: two resistors of a diode bias network tuned to a target operating point.
- ``rc_cascade``: two RC stages joined by a VCVS buffer, composed sequentially as three
  modules, tuned to a target step response.

Each writes ``summary.json`` and plots (target against achieved, loss against
iteration) into the results folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._module import AbstractModule, Group, Sequential
from .._plotting import pyplot
from . import butterworth
from .circuit import Circuit
from .design import multistart, random_starts, unstack
from .modules import DCResponse, SParameters, TransientResponse

DEFAULT_LADDER = {
    "example": "circuit_design", "design": "butterworth_ladder", "run": "butterworth-ladder",
    "order": 5, "cutoff_hz": 1000.0, "resistance": 50.0, "starts": 20, "spread": 0.5,
    "seed": 0, "method": "steps", "iterations": 60, "tolerance": 0.005,
    "frequencies": {"start": 100.0, "stop": 10000.0, "num": 41},
}


def _relative_errors(circuits, truth: dict, count: int) -> np.ndarray:
    values = circuits.values()
    return np.array([[float(values[k][i]) / v - 1 for k, v in truth.items()]
                     for i in range(count)])


def _report(out: Path, summary: dict, history) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for row in np.atleast_2d(history):
        ax.semilogy(np.maximum(row, 1e-30), lw=0.8, alpha=0.7)
    ax.set_xlabel("iteration" if summary.get("method") == "steps" else "saved point")
    ax.set_ylabel("loss")
    ax.set_title(f"{summary['design']}: every start")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)


def _summary(config, truth, errors, result, tolerance) -> dict:
    success = np.max(np.abs(errors), axis=1) < tolerance
    return {
        "design": config["design"], "method": result.get("method", config.get("method")),
        "starts": len(errors), "successes": int(success.sum()),
        "tolerance": tolerance, "wall_time_s": result["wall_time_s"],
        "truth": truth, "max_abs_relative_error": np.max(np.abs(errors), axis=1).tolist(),
        "final_loss": result["loss"].tolist(),
        "errors": [dict(zip(truth, row.tolist())) for row in errors],
    }


# ----------------------------------------------------------------------------- (a) ladder


def ladder_problem(config: dict) -> dict:
    """The specification of example (a): ``truth`` (element values), ``build``
    (values -> `SParameters` module), ``frequencies``, ``targets`` and ``weights``
    (the Butterworth response in closed form: ``|S21|`` in dB and the input reflection
    S11, as `config`'s ``quantities`` pick), plus ``base`` (the circuit) and ``output``."""
    config = DEFAULT_LADDER | config
    order, fc, r0 = config["order"], config["cutoff_hz"], config["resistance"]
    truth = butterworth.ladder_values(order, fc, r0)
    base = Circuit.from_netlist(butterworth.ladder_netlist(order, fc, r0), free=list(truth),
                                scale="log")
    f = config["frequencies"]
    freqs = np.logspace(np.log10(f["start"]), np.log10(f["stop"]), f["num"])
    s11, s21 = butterworth.scattering(freqs, order, fc)
    quantities = tuple(config.get("quantities", ("s21_db", "s11_re", "s11_im")))
    columns = {"s21_db": 20 * np.log10(np.abs(s21)), "s11_re": s11.real, "s11_im": s11.imag,
               "s11_db": 20 * np.log10(np.abs(s11)), "s21_re": s21.real, "s21_im": s21.imag}
    output = butterworth.output_node(order)

    def build(values):
        return SParameters(base.with_values(**values), "v_n1", output, r0, r0, quantities)

    return {"truth": truth, "build": build, "frequencies": freqs, "base": base,
            "output": output, "quantities": quantities,
            "targets": np.stack([columns[q] for q in quantities], axis=1),
            "weights": np.array([1.0 if q.endswith("db") else 10.0 for q in quantities])}


def run_ladder(config: dict, out: Path) -> dict:
    """Example (a). The specification is the Butterworth response in closed form: the
    magnitude ``|S21|`` in dB (the mask), and the input reflection ``S11``, whose phase
    makes the element values well determined (see docs/circuits.md)."""
    config = DEFAULT_LADDER | config
    order, fc, r0 = config["order"], config["cutoff_hz"], config["resistance"]
    problem = ladder_problem(config)
    truth, build, base, output = (problem[k] for k in ("truth", "build", "base", "output"))
    freqs, targets, weights = (problem[k] for k in ("frequencies", "targets", "weights"))
    quantities, f = problem["quantities"], config["frequencies"]
    starts = random_starts(truth, config["starts"], config["spread"], config["seed"])
    result = multistart(build, starts, freqs[:, None], targets, weights=weights,
                        method=config["method"], iterations=config["iterations"])
    circuits = result["models"].circuit
    errors = _relative_errors(circuits, truth, len(starts))
    summary = _summary(config, truth, errors, result, config["tolerance"])
    summary["quantities"] = list(quantities)
    _report(out, summary, result["history"])

    plt = pyplot()
    fine = np.logspace(np.log10(f["start"]), np.log10(f["stop"]), 400)
    _, s21_fine = butterworth.scattering(fine, order, fc)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(fine, 20 * np.log10(np.abs(s21_fine)), "k", lw=2, label="Butterworth target")
    for i in range(len(starts)):
        achieved = jax.vmap(SParameters(unstack(circuits, i), "v_n1", output, r0, r0))(
            jnp.asarray(fine)[:, None])[:, 0]
        ax.semilogx(fine, np.asarray(achieved), lw=0.8, alpha=0.6,
                    label="achieved (each start)" if i == 0 else None)
        if i == 0:
            start_curve = jax.vmap(SParameters(base.with_values(**starts[0]), "v_n1", output,
                                               r0, r0))(jnp.asarray(fine)[:, None])[:, 0]
            ax.semilogx(fine, np.asarray(start_curve), "C3--", lw=1, label="start 0")
    ax.set_ylim(-80, 5)
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("|S21| (dB)")
    ax.set_title(f"{summary['successes']}/{len(starts)} starts within "
                 f"{100 * config['tolerance']:g} % of the prototype")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "response.png", dpi=110)
    plt.close(fig)
    return summary


# ----------------------------------------------------------------------------- (b) diode bias

DIODE_BIAS_NETLIST = """* diode bias network: supply, series resistor, diode, emitter-style resistor
V1 vcc 0 DC 5
R1 vcc a 2.2k
D1 a k DS
R2 k 0 1k
R3 a 0 10k
.model DS D(IS=2.52e-9 N=1.752 RS=0.568)
.end
"""


def run_diode_bias(config: dict, out: Path) -> dict:
    """Example (b): tune R1 and R2 so that, at supplies of 4, 5 and 6 V, the diode's
    anode and cathode sit at the voltages of a target design (R1 = 1.5k, R2 = 680)."""
    targets_values = {"r1": 1500.0, "r2": 680.0}
    base = Circuit.from_netlist(config.get("netlist", DIODE_BIAS_NETLIST), free=["r1", "r2"],
                                scale="log")
    supplies = np.array(config.get("supplies", [4.0, 5.0, 6.0]))[:, None]
    outputs = ("v_a", "v_k")
    reference = DCResponse(base.with_values(**targets_values), "v1", outputs)
    targets = np.asarray(jax.vmap(reference)(jnp.asarray(supplies)))

    def build(values):
        return DCResponse(base.with_values(**values), "v1", outputs)

    starts = random_starts(targets_values, config.get("starts", 20),
                           config.get("spread", 0.5), config.get("seed", 0))
    result = multistart(build, starts, supplies, targets, weights=1e2,
                        method=config.get("method", "steps"),
                        iterations=config.get("iterations", 40))
    circuits = result["models"].circuit
    errors = _relative_errors(circuits, targets_values, len(starts))
    summary = _summary(config, targets_values, errors, result, config.get("tolerance", 1e-3))
    summary["targets"] = {"supplies": supplies[:, 0].tolist(),
                          **{name: targets[:, k].tolist() for k, name in enumerate(outputs)}}
    _report(out, summary, result["history"])

    plt = pyplot()
    sweep = np.linspace(0.0, 8.0, 81)[:, None]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    target_curve = np.asarray(jax.vmap(reference)(jnp.asarray(sweep)))
    achieved = np.asarray(jax.vmap(DCResponse(unstack(circuits, 0), "v1", outputs))(
        jnp.asarray(sweep)))
    for k, name in enumerate(outputs):
        ax.plot(sweep[:, 0], target_curve[:, k], "k", lw=2, alpha=0.5,
                label="target design" if k == 0 else None)
        ax.plot(sweep[:, 0], achieved[:, k], f"C{k}--", label=f"achieved {name}")
        ax.plot(supplies[:, 0], targets[:, k], "ko", ms=4)
    ax.set_xlabel("supply (V)")
    ax.set_ylabel("node voltage (V)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "operating_point.png", dpi=110)
    plt.close(fig)
    return summary


# ----------------------------------------------------------------------------- (c) RC cascade

CASCADE_NETLIST = """* band-pass cascade: RC low-pass, VCVS buffer, CR high-pass
.subckt lowpass in out
R1 in out 1k
C1 out 0 1u
.ends
.subckt highpass in out
C1 in out 0.47u
R1 out 0 1k
.ends
V1 in 0 DC 0
X1 in a lowpass
E1 b 0 a 0 2
X2 b out highpass
.end
"""
"""The whole circuit; its two subcircuits are the stages of `rc_cascade`."""


class Buffer(AbstractModule):
    """The VCVS buffer between the stages: ``gain * x`` (the E element, as a module)."""

    gain: jax.Array
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=None)
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __call__(self, x):
        return self.gain * x


def rc_cascade(times, one_block: bool = False):
    """A builder ``values -> highpass @ buffer @ lowpass``: each stage a
    `TransientResponse` of one instance of a subcircuit of `CASCADE_NETLIST`
    (`Circuit.from_subcircuit`), driven by the previous module's output samples;
    `values` holds ``c1`` (low-pass), ``gain`` (the buffer E1) and ``c2`` (high-pass).
    (Two low-pass stages would be interchangeable: their step response is symmetric in
    the two time constants.) With `one_block` the composition is wrapped in a `Group`,
    so that the metric couples the three values (full Gauss-Newton) instead of being
    block-diagonal per module."""
    options = {"solver": diffrax.Tsit5(), "rtol": 1e-8, "atol": 1e-10}

    def stage(name):
        circuit = Circuit.from_subcircuit(CASCADE_NETLIST, name, free=[f"x{name}.c1"],
                                          scale="log")
        return TransientResponse(circuit, times, "v_out", drive="vdrive", options=options)

    lowpass, highpass = stage("lowpass"), stage("highpass")

    def build(values):
        def with_c(module, c):
            circuit = module.circuit
            (name,) = circuit.params
            return eqx.tree_at(lambda m: m.circuit, module, circuit.with_values(**{name: c}))

        cascade = Sequential([with_c(lowpass, values["c1"]),
                              Buffer(jnp.asarray(values["gain"], float)),
                              with_c(highpass, values["c2"])])
        return Group(cascade) if one_block else cascade

    return build


def run_rc_cascade(config: dict, out: Path) -> dict:
    """Example (c): fit C1, the buffer gain and C2 to the step response of a target
    band-pass cascade (low-pass C1 = 1 uF, gain 2, high-pass C2 = 0.47 uF, R = 1k
    each)."""
    truth = {"c1": 1e-6, "gain": 2.0, "c2": 0.47e-6}
    times = np.linspace(0.0, 8e-3, config.get("samples", 81))
    step = np.where(times > 0, 1.0, 0.0)
    step[1:] = 1.0  # a step just after t = 0 (linear ramp over the first interval)
    one_block = config.get("one_block", True)
    build = rc_cascade(times, one_block)
    targets = np.asarray(build(truth)(jnp.asarray(step)))[None, :]

    starts = random_starts(truth, config.get("starts", 10), config.get("spread", 0.5),
                           config.get("seed", 0))
    result = multistart(build, starts, step[None, :], targets, weights=1.0,
                        method=config.get("method", "steps"),
                        iterations=config.get("iterations", 30))
    models = result["models"].module if one_block else result["models"]
    fitted = {"c1": models.modules[0].circuit.values()["xlowpass.c1"],
              "gain": models.modules[1].gain,
              "c2": models.modules[2].circuit.values()["xhighpass.c1"]}
    errors = np.array([[float(fitted[k][i]) / v - 1 for k, v in truth.items()]
                       for i in range(len(starts))])
    summary = _summary(config, truth, errors, result, config.get("tolerance", 1e-3))
    summary["one_block"] = one_block
    _report(out, summary, result["history"])

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(1e3 * times, targets[0], "k", lw=2, alpha=0.5, label="target step response")
    first = unstack(models, 0)
    ax.plot(1e3 * times, np.asarray(first(jnp.asarray(step))), "C0--", label="achieved")
    ax.plot(1e3 * times, np.asarray(build(starts[0])(jnp.asarray(step))), "C3:",
            label="start")
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("output (V)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "step_response.png", dpi=110)
    plt.close(fig)
    return summary


DESIGNS = {"butterworth_ladder": run_ladder, "diode_bias": run_diode_bias,
           "rc_cascade": run_rc_cascade}


def run_design(config: dict, out: Path) -> dict:
    """Run the design named by ``config["design"]``.

    **Raises:** `SystemExit` with the known names for an unknown design.
    """
    name = config.get("design")
    if name not in DESIGNS:
        raise SystemExit(f"modopt: unknown circuit design {name!r}; known: "
                         f"{', '.join(DESIGNS)}.")
    summary = DESIGNS[name](config, out)
    print(f"{name}: {summary['successes']}/{summary['starts']} starts within "
          f"{100 * summary['tolerance']:g} % of the target values "
          f"({summary['wall_time_s']:.1f} s, compilation included)")
    return summary
