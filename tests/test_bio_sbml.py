"""SBML import: the SBML Test Suite's own results and pass rule, libroadrunner's
repressilator trajectory, finite differences, and clear errors for what is unsupported."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modopt import RESULTS
from modopt.bio import SBMLError, SBMLUnsupportedError, read_sbml
from modopt.bio.sbml_suite import case_folders, run_case

DATA = Path(__file__).parent / "data"
SUITE = DATA / "sbml-test-suite"


@pytest.mark.parametrize("folder", case_folders(SUITE), ids=lambda p: p.name)
def test_sbml_test_suite_case_passes_the_suites_rule(folder):
    result = run_case(folder)
    assert result.passed, result.reason


def test_suite_runner_command_prints_failures_and_a_last_summary_line(tmp_path):
    for case in ("00001", "01821"):
        (tmp_path / case).symlink_to((SUITE / case).resolve())
    broken = tmp_path / "00002"
    broken.mkdir()
    for f in (SUITE / "00001").iterdir():
        (broken / f.name.replace("00001", "00002")).write_text(f.read_text())
    results = broken / "00002-results.csv"
    lines = results.read_text().splitlines()
    lines[5] = lines[5].split(",")[0] + ",123.0" * (len(lines[5].split(",")) - 1)
    results.write_text("\n".join(lines) + "\n")
    run = subprocess.run([sys.executable, "-m", "modopt.bio.sbml_suite", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    out = run.stdout.strip().splitlines()
    assert out[-1] == "2 passed, 1 failed", run.stdout + run.stderr
    assert out[0].startswith("FAIL 00002: ") and "out of tolerance" in out[0]
    assert run.returncode == 1


def test_repressilator_matches_libroadrunner():
    reference = np.genfromtxt(DATA / "models/BIOMD0000000012_roadrunner_reference_0-1000min.csv",
                              delimiter=",", names=True)
    model = read_sbml(DATA / "models/BIOMD0000000012_repressilator.xml")
    times = reference["time"][::10]
    sim = model.simulate(times, rtol=1e-10, atol=1e-12)
    for name in ("X", "Y", "Z", "PX", "PY", "PZ"):
        expected = reference[name][::10]
        error = np.max(np.abs(np.asarray(sim.amounts[name]) - expected)) / np.max(expected)
        assert error < 1e-6, (name, error)


def _repressilator():
    return read_sbml(DATA / "models/BIOMD0000000012_repressilator.xml")


def test_parameter_gradient_matches_central_differences():
    model = _repressilator()
    times = jnp.linspace(0.0, 50.0, 6)

    def output(log_km, log_tau):
        sim = model.simulate(times, {"KM": jnp.exp(log_km), "tau_prot": jnp.exp(log_tau)},
                             rtol=1e-10, atol=1e-12)
        return jnp.sum(sim.amounts["PX"][1:]) / 1e3

    x = (jnp.log(40.0), jnp.log(10.0))
    grad = jax.jit(jax.grad(output, argnums=(0, 1)))(*x)
    h = 1e-5
    for i, g in enumerate(grad):
        plus = list(x)
        minus = list(x)
        plus[i] = plus[i] + h
        minus[i] = minus[i] - h
        fd = (output(*plus) - output(*minus)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-5)


def test_jit_does_not_recompile_for_new_values_and_vmaps():
    model = _repressilator()
    traces = []

    @jax.jit
    def final_protein(tau):
        traces.append(1)
        return model.simulate(jnp.array([0.0, 20.0]), {"tau_prot": tau}).amounts["PX"][-1]

    a = final_protein(jnp.asarray(10.0))
    b = final_protein(jnp.asarray(12.0))
    assert len(traces) == 1 and a != b
    batch = jax.vmap(final_protein)(jnp.array([10.0, 12.0]))
    np.testing.assert_allclose(batch, [a, b], rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_in_is_dtype_out(dtype):
    model = _repressilator()
    sim = model.simulate(jnp.array([0.0, 5.0], dtype), {"KM": jnp.asarray(40.0, dtype)},
                         rtol=1e-5, atol=1e-6)
    assert sim.amounts["PX"].dtype == dtype and sim.values["beta"].dtype == dtype


def test_failed_integration_is_a_result_code_not_stale_numbers():
    model = _repressilator()
    sim = model.simulate(jnp.linspace(0, 1000, 5), max_steps=10)
    assert not bool(sim.result == RESULTS.successful)
    assert np.all(np.isnan(np.asarray(sim.amounts["PX"])))
    with pytest.raises(Exception, match="max_steps"):
        model.simulate(jnp.linspace(0, 1000, 5), max_steps=10, throw=True)


SKELETON = """<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" version="2">
  <model id="m">
    <listOfCompartments><compartment id="c" size="1" constant="true"/></listOfCompartments>
    <listOfSpecies>
      <species id="A" compartment="c" initialAmount="1" hasOnlySubstanceUnits="false"
               boundaryCondition="false" constant="false"/>
    </listOfSpecies>
    <listOfParameters><parameter id="k" value="1" constant="false"/></listOfParameters>
    {extra}
  </model>
</sbml>"""

MATH = '<math xmlns="http://www.w3.org/1998/Math/MathML">{}</math>'
DECAY = MATH.format("<apply><times/><ci>k</ci><ci>A</ci></apply>")
DELAYED = MATH.format(
    '<apply><csymbol encoding="text" definitionURL="http://www.sbml.org/sbml/symbols/delay">'
    "delay</csymbol><ci>A</ci><cn>1</cn></apply>")


L3V1 = ('xmlns="http://www.sbml.org/sbml/level3/version1/core" level="3" version="1"')


@pytest.mark.parametrize("extra, message", [
    ('<listOfEvents><event id="kick" useValuesFromTriggerTime="true"><trigger '
     'initialValue="true" persistent="true">' + MATH.format("<true/>") + "</trigger>"
     "</event></listOfEvents>", "event 'kick'"),
    (f"<listOfRules><algebraicRule>{DECAY}</algebraicRule></listOfRules>", "algebraic rule"),
    (L3V1 + '<listOfReactions><reaction id="R1" reversible="false" fast="true"><listOfReactants>'
     '<speciesReference species="A" stoichiometry="1" constant="true"/></listOfReactants>'
     f"<kineticLaw>{DECAY}</kineticLaw></reaction></listOfReactions>", "fast reaction 'R1'"),
    ('<listOfReactions><reaction id="R2" reversible="false"><listOfReactants>'
     '<speciesReference species="A" stoichiometry="1" constant="true"/></listOfReactants>'
     f"<kineticLaw>{DELAYED}</kineticLaw></reaction></listOfReactions>",
     "delay in the kinetic law of reaction 'R2'"),
    (f'<listOfConstraints><constraint metaid="c1">{MATH.format("<true/>")}</constraint>'
     "</listOfConstraints>", "constraint 'c1'"),
])
def test_unsupported_constructs_are_errors_naming_the_element(extra, message):
    text = SKELETON
    if extra.startswith(L3V1):
        extra = extra[len(L3V1):]
        text = text.replace('xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" '
                            'version="2"', L3V1)
    with pytest.raises(SBMLUnsupportedError, match=message):
        read_sbml(text.replace("{extra}", extra))


def test_algebraic_loop_and_unreadable_files_are_errors():
    loop = ("<listOfRules>"
            f'<assignmentRule variable="k">{MATH.format("<ci>A</ci>")}</assignmentRule>'
            "</listOfRules><listOfInitialAssignments>"
            f'<initialAssignment symbol="A">{MATH.format("<ci>k</ci>")}</initialAssignment>'
            "</listOfInitialAssignments>")
    with pytest.raises(SBMLError, match="algebraic loop"):
        read_sbml(SKELETON.replace("{extra}", loop))
    with pytest.raises(SBMLError, match="libsbml reports errors"):
        read_sbml("<sbml><model></sbml>")
    with pytest.raises(FileNotFoundError):
        read_sbml("no/such/model.xml")
    model = read_sbml(SKELETON.replace("{extra}", ""))
    with pytest.raises(KeyError, match="not parameters"):
        model.simulate([0.0, 1.0], {"kk": 1.0})
    with pytest.raises(KeyError, match="set by assignment rules"):
        _repressilator().simulate([0.0, 1.0], {"beta": 0.3})
