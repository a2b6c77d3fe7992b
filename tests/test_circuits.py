"""modopt.circuits: the netlist reader, bad input, the analysis contract, derivatives
against closed forms and finite differences, jit behaviour, and the design examples."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import modopt
from modopt.circuits import Circuit, NetlistError, parse_netlist
from modopt.circuits.expressions import parse_number

jax.config.update("jax_enable_x64", True)

DIVIDER = """* divider
V1 in 0 DC 10
R1 in mid 1k
R2 mid 0 2k
.end
"""


# ----------------------------------------------------------------------------- reader


def test_numbers_with_si_suffixes():
    cases = {"1f": 1e-15, "2p": 2e-12, "3n": 3e-9, "4u": 4e-6, "5m": 5e-3, "6k": 6e3,
             "7meg": 7e6, "8g": 8e9, "9t": 9e12, "10uF": 1e-5, "1Meg": 1e6, "2.2kOhm": 2200.0,
             "1e-3": 1e-3, ".5": 0.5, "3mil": 3 * 25.4e-6}
    for text, value in cases.items():
        assert parse_number(text) == pytest.approx(value, rel=1e-12), text
    assert parse_number("abc") is None


def test_reader_handles_params_subcircuits_comments_and_skipped_cards():
    netlist = parse_netlist("""title line: not an element
.param r0=1k c0={2*r0*1n}
* a comment
.subckt stage a b params: r=1k
R1 a m {r} ; inline comment
C1 m 0 {c0}
R2 m b
+ 500
.ends stage
.subckt pair in out
X1 in mid stage r=2k
X2 mid out stage
.ends
V1 in 0 DC 1 AC 1 PULSE(0 1 1u 1n 1n 1u 2u)
Xp in out pair
RL out 0 10meg
.options reltol=1e-6
.tran 1n 1u
.control
run
.endc
.end
R99 never read
""")
    names = [e.name for e in netlist.elements]
    assert names == ["v1", "xp.x1.r1", "xp.x1.c1", "xp.x1.r2", "xp.x2.r1", "xp.x2.c1",
                     "xp.x2.r2", "rl"]
    r1 = netlist.element("xp.x1.r1")
    assert r1.value == 2000.0 and r1.nodes == ("in", "xp.x1.m")
    assert netlist.element("xp.x2.r1").value == 1000.0
    assert netlist.element("xp.x2.c1").value == pytest.approx(2e-6)
    assert netlist.element("xp.x1.r2").nodes == ("xp.x1.m", "xp.mid")
    assert netlist.element("xp.x1.r2").value == 500.0
    assert netlist.element("rl").value == 1e7
    v1 = netlist.element("v1")
    assert v1.ac == (1.0, 0.0) and v1.waveform.kind == "pulse"
    assert any(a.startswith(".tran") for a in netlist.analyses)


@pytest.mark.parametrize("text, message", [
    ("t\nM1 d g s b nmos\n", "line 2 (M1): element type 'M' is not supported"),
    ("t\nR1 a\n", "line 2 (R1): too few fields"),
    ("t\n.include foo.lib\n", "line 2 (.include): the card .include is not supported"),
    ("t\nD1 a 0 nomodel\nR1 a 0 1\n", "unknown diode model"),
    ("t\nX1 a b nosuch\n", "unknown subcircuit 'nosuch'"),
    ("t\n.subckt s a b\nR1 a b 1\n.ends\nX1 a s\n", "has 2 ports (a b), the instance gives 1"),
    ("t\nV1 a 0 PWL(0 0 1 1 0.5 2)\n", "PWL times must increase"),
    ("t\nR1 a 0 {unknown*2}\n", "unknown parameter 'unknown'"),
    ("t\nB1 a 0 I = 1 + foo(v(a))\n", "unknown function 'foo'"),
    ("t\nR1 a 0 1k\nR1 a 0 2k\n", "duplicate element names: r1"),
    ("t\n.model q1 npn(bf=100)\n", "only diode models"),
    ("t\n.model d1 D(bv=5)\n", "unsupported diode model parameters ['bv']"),
])
def test_malformed_or_unsupported_netlists_name_the_line_and_element(text, message):
    with pytest.raises(NetlistError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        parse_netlist(text)


def test_floating_node_and_voltage_source_loop_are_errors():
    with pytest.raises(NetlistError, match="floating node.*b"):
        Circuit.from_netlist("t\nV1 a 0 1\nR1 a 0 1k\nC1 a b 1u\nR2 b c 1k\nC2 c 0 1u\n")
    with pytest.raises(NetlistError, match="loop of voltage sources.*v1, v2|v2, v1"):
        Circuit.from_netlist("t\nV1 a 0 1\nV2 a 0 2\nR1 a 0 1k\n")
    with pytest.raises(NetlistError, match="controlling source 'vx'"):
        Circuit.from_netlist("t\nV1 a 0 1\nR1 a 0 1k\nF1 a 0 vx 2\n")


def test_singular_dc_system_and_nonphysical_values_give_result_codes():
    # An inductor across a voltage source shorts it at DC: no operating point.
    shorted = Circuit.from_netlist("t\nV1 a 0 1\nL1 a 0 1m\nR1 a 0 1k\n")
    point = shorted.operating_point()
    assert point.result == modopt.RESULTS.operating_point_not_found
    assert np.all(np.isnan(point.x))
    with pytest.raises(Exception, match="No DC operating point"):
        shorted.operating_point(throw=True)
    negative = Circuit.from_netlist(DIVIDER).with_values(r2=-2000.0)
    point = negative.operating_point()
    assert point.result == modopt.RESULTS.nonphysical_element
    assert np.all(np.isnan(negative.op()["v_mid"]))


def test_free_and_scale_are_checked():
    with pytest.raises(ValueError, match="not elements with a value"):
        Circuit.from_netlist(DIVIDER, free=["r7"])
    with pytest.raises(ValueError, match="scale must be"):
        Circuit.from_netlist(DIVIDER, scale="db")


# ----------------------------------------------------------------------------- contract


def test_analyses_return_named_lower_case_results_with_ngspice_signs():
    circuit = Circuit.from_netlist(DIVIDER.replace("V1 in 0 DC 10", "V1 IN 0 DC 10 AC 1"))
    op = circuit.op()
    assert set(op) == {"v_in", "v_mid", "i_v1"}
    assert float(op["v_mid"]) == pytest.approx(10 * 2 / 3, rel=1e-12)
    # ngspice: the current through V1 from + to -, i.e. minus what it delivers.
    assert float(op["i_v1"]) == pytest.approx(-10 / 3000, rel=1e-12)
    ac = circuit.ac([10.0, 100.0])
    assert jnp.iscomplexobj(ac["v_mid"]) and ac["v_mid"].shape == (2,)
    sweep = circuit.dc_sweep("V1", np.linspace(-1, 1, 5))
    np.testing.assert_allclose(sweep["v_mid"], np.linspace(-1, 1, 5) * 2 / 3, rtol=1e-12)
    with pytest.raises(ValueError, match="not an independent source"):
        circuit.dc_sweep("r1", [1.0])


def test_operating_point_derivatives_match_the_closed_form():
    circuit = Circuit.from_netlist(DIVIDER, free=["r1", "r2"])

    def v_mid(c):
        return c.op()["v_mid"]

    grads = eqx.filter_grad(v_mid)(circuit).params
    r1, r2 = 1000.0, 2000.0
    assert float(grads["r1"]) == pytest.approx(-10 * r2 / (r1 + r2) ** 2, rel=1e-10)
    assert float(grads["r2"]) == pytest.approx(10 * r1 / (r1 + r2) ** 2, rel=1e-10)


RC = """* rc
V1 in 0 DC 0 AC 1 PULSE(0 1 0 1n 1n 1 2)
R1 in out 1k
C1 out 0 1u
.end
"""


def test_ac_and_transient_derivatives_match_closed_forms():
    circuit = Circuit.from_netlist(RC, free=["c1"], scale="log")
    f = 200.0

    def gain(c):
        return jnp.abs(c.ac([f])["v_out"][0])

    tau = 1e-3
    w = 2 * np.pi * f
    # d|H|/dlog C = -(w tau)^2 / (1 + (w tau)^2)^(3/2)
    expected = -((w * tau) ** 2) / (1 + (w * tau) ** 2) ** 1.5
    got = eqx.filter_grad(gain)(circuit).params["c1"]
    assert float(got) == pytest.approx(expected, rel=1e-9)

    times = np.array([0.5e-3, 1e-3, 2e-3])

    def response(c):
        return c.transient(times, rtol=1e-10, atol=1e-12, sensitivity="forward")["v_out"]

    ramp = 1e-9  # the pulse's rise time shifts the exponential by about half of it
    values = np.asarray(response(circuit))
    np.testing.assert_allclose(values, 1 - np.exp(-(times - ramp / 2) / tau), atol=1e-8)
    jac = eqx.filter_jacfwd(response)(circuit).params["c1"]
    # d/dlog C of 1 - exp(-t / tau) = -(t / tau) exp(-t / tau)
    np.testing.assert_allclose(jac, -(times / tau) * np.exp(-times / tau), rtol=1e-5)


def test_nonlinear_operating_point_derivative_matches_finite_differences():
    netlist = """* diode bias
V1 vcc 0 5
R1 vcc a 2.2k
D1 a 0 DS
.model DS D(IS=2.52e-9 N=1.752 RS=0.568)
"""
    circuit = Circuit.from_netlist(netlist, free=["r1"])

    def v_a(r1):
        return circuit.with_values(r1=r1).op()["v_a"]

    h = 1e-3
    fd = (v_a(2200.0 + h) - v_a(2200.0 - h)) / (2 * h)
    assert float(jax.grad(v_a)(2200.0)) == pytest.approx(float(fd), rel=1e-6)


def test_jit_does_not_recompile_for_new_values_and_keeps_dtype():
    traces = []

    @eqx.filter_jit
    def op(c):
        traces.append(1)
        return c.op()["v_mid"]

    base = Circuit.from_netlist(DIVIDER)
    first = op(base)
    second = op(base.with_values(r2=1000.0))
    assert len(traces) == 1
    assert float(first) == pytest.approx(20 / 3) and float(second) == pytest.approx(5.0)
    single = Circuit.from_netlist(DIVIDER, dtype=jnp.float32)
    assert single.op()["v_mid"].dtype == jnp.float32
    assert base.op()["v_mid"].dtype == jnp.float64
    batched = jax.vmap(lambda r: base.with_values(r2=r).op()["v_mid"])(jnp.array([1e3, 2e3]))
    np.testing.assert_allclose(batched, [5.0, 20 / 3], rtol=1e-12)


# ----------------------------------------------------------------------------- design


def test_butterworth_closed_form_matches_the_simulated_ladder():
    from modopt.circuits import butterworth
    from modopt.circuits.modules import SParameters

    circuit = Circuit.from_netlist(butterworth.ladder_netlist(5, 1e3, 50.0))
    f = np.logspace(1, 5, 17)
    module = SParameters(circuit, "v_n1", "v_n3", 50.0, 50.0,
                         ("s11_re", "s11_im", "s21_re", "s21_im"))
    got = np.asarray(jax.vmap(module)(jnp.asarray(f)[:, None]))
    s11, s21 = butterworth.scattering(f, 5, 1e3)
    np.testing.assert_allclose(got[:, 0] + 1j * got[:, 1], s11, atol=1e-12)
    np.testing.assert_allclose(got[:, 2] + 1j * got[:, 3], s21, atol=1e-12)


def test_example_a_recovers_the_butterworth_prototype_from_random_starts(tmp_path):
    from modopt.circuits.design_examples import DEFAULT_LADDER, run_ladder

    summary = run_ladder(dict(DEFAULT_LADDER), tmp_path)
    assert summary["successes"] >= 18, summary["max_abs_relative_error"]
    assert (tmp_path / "response.png").is_file() and (tmp_path / "loss.png").is_file()


def test_example_b_tunes_the_diode_bias_network(tmp_path):
    from modopt.circuits.design_examples import run_diode_bias

    summary = run_diode_bias({"design": "diode_bias", "starts": 8}, tmp_path)
    assert summary["successes"] == 8, summary["max_abs_relative_error"]


def test_rc_cascade_composition_equals_the_whole_circuit():
    """Stage modules (one subcircuit instance each) driven by each other's samples, the
    sequential composition of example (c), against the whole netlist with both
    subcircuits and the VCVS buffer."""
    from modopt.circuits.design_examples import CASCADE_NETLIST, rc_cascade

    times = np.linspace(0.0, 8e-3, 161)
    step = np.ones_like(times)
    step[0] = 0.0
    cascade = rc_cascade(times)({"c1": 1e-6, "gain": 2.0, "c2": 0.47e-6})
    got = np.asarray(cascade(jnp.asarray(step)))
    ramp = CASCADE_NETLIST.replace("V1 in 0 DC 0", f"V1 in 0 PWL(0 0 {float(times[1])!r} 1)")
    whole = Circuit.from_netlist(ramp).transient(times[1:])["v_out"]
    # The buffer's input reaches stage 2 as samples joined linearly: an O(dt^2) error.
    np.testing.assert_allclose(got[1:], np.asarray(whole), atol=2e-3)


def test_a_subcircuit_instance_is_a_circuit_of_its_own():
    text = "t\n.subckt div a b\nR1 a b 1k\nR2 b 0 3k\n.ends\nV1 x 0 1\nX1 x y div\n"
    stage = Circuit.from_subcircuit(text, "div", free=["xdiv.r2"])
    assert set(stage.params) == {"xdiv.r2"}
    point = stage.operating_point(source=("vdrive", 2.0))
    assert float(point.x[stage.topology.index("b")]) == pytest.approx(1.5, rel=1e-12)
    with pytest.raises(NetlistError, match="no .subckt 'nope'"):
        Circuit.from_subcircuit(text, "nope")


def test_energy_metric_is_the_capacitance_and_inductance_at_the_outputs():
    from modopt.circuits.energy import energy_matrix, energy_metric
    from modopt.circuits.modules import DCResponse

    text = "t\nV1 a 0 1\nR1 a b 1k\nC1 b 0 2u\nC2 b c 3u\nR2 c 0 1k\nL1 c 0 5m\n"
    circuit = Circuit.from_netlist(text, free=["r1", "r2"])
    # Nodal capacitance matrix of C1 (b-0) and C2 (b-c), and L1 on its current.
    np.testing.assert_allclose(energy_matrix(circuit, ["v_b", "v_c", "i_l1"]),
                               [[5e-6, -3e-6, 0], [-3e-6, 3e-6, 0], [0, 0, 5e-3]], rtol=1e-12)
    with pytest.raises(ValueError, match="stores no energy"):
        energy_matrix(circuit, ["i_v1"])
    with pytest.raises(ValueError, match="see no capacitance"):
        energy_matrix(circuit, ["v_a"])
    module = DCResponse(circuit, "v1", ("v_b", "v_c"))
    inputs = jnp.array([[1.0], [2.0]])
    direction = modopt.riemannian_direction(
        module, modopt.losses.squared_error, inputs, jnp.zeros((2, 2)),
        output_metric=energy_metric(circuit, ["v_b", "v_c"], 2), mass=1e-9)
    assert bool(direction.is_finite)
