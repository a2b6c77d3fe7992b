"""The biology examples (issue (b) and (c)) against independent references.

Morphogen line: the steady state against a numpy solve of the linear system and the
analytic ``cosh`` profile of the discrete chain; the time courses against the matrix
exponential; the Fisher information of steady-state data against its analytic Jacobian,
whose three columns sum to zero (the scaling ``(aD, ak, as)``), and that of time courses
against central differences of the matrix exponential. Toggle dose-response: the
simulation against the stored scipy trajectories (rtol 1e-10), the Fisher Jacobian
against central differences. Both examples are then run end to end; their estimates are
judged by statistics, not stored answers: every recovered parameter (or identified
ratio) within 3 Cramer-Rao standard errors, and the fit at least as good as the truth.
"""

import csv
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from modopt.bio import TOGGLE_NOMINAL
from modopt.bio.dose_response import (
    TOGGLE_STARTS,
    dose_conditions,
    dose_response_problem,
    iptg_doses,
    toggle_dose_response,
)
from modopt.bio.example_fitting import fisher_summary
from modopt.bio.morphogen import (
    MORPHOGEN_NOMINAL,
    french_flag,
    morphogen_line,
    morphogen_steady_state,
)
from modopt.bio.morphogen_example import run_morphogen
from modopt.bio.toggle_example import run_toggle_dose_response
from modopt.systems.recovery import weighted_jacobian

DATA = Path(__file__).parent / "data" / "models"
TIGHT = dict(rtol=1e-11, atol=1e-12, max_steps=100_000)
OTHER = {"D": 0.4, "k": 0.25, "s": 2.0}


# ----------------------------------------------------------------------------- references


def _system(params, n):
    """``dc/dt = A c + b`` of the line, built directly from the equations."""
    laplacian = -2 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
    laplacian[0, 0] = laplacian[-1, -1] = -1.0  # zero flux: c_{-1} = c_0, c_N = c_{N-1}
    a = params["D"] * laplacian - params["k"] * np.eye(n)
    b = np.zeros(n)
    b[0] = params["s"]
    return a, b, laplacian


def _cosh_profile(params, n):
    """The steady state ``A cosh(mu (N - 1/2 - i))``, ``cosh mu = 1 + k / (2 D)``."""
    d, k, s = params["D"], params["k"], params["s"]
    mu = np.arccosh(1 + k / (2 * d))
    shape = np.cosh(mu * (n - 0.5 - np.arange(n)))
    amplitude = s / (k * shape[0] + d * (shape[0] - shape[1]))
    return amplitude * shape


def _expm_course(params, n, times):
    """``c(t) = A^-1 (exp(A t) - I) b`` from ``c(0) = 0``."""
    a, b, _ = _system(params, n)
    return np.stack([np.linalg.solve(a, (scipy.linalg.expm(a * t) - np.eye(n)) @ b)
                     for t in times])


def _toggle_reference():
    with open(DATA / "toggle_gardner2000_scipy_reference.csv") as file:
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]
    return rows


# ----------------------------------------------------------------------------- morphogen


@pytest.mark.parametrize("params", [MORPHOGEN_NOMINAL, OTHER])
@pytest.mark.parametrize("n", [5, 12])
def test_steady_state_matches_linear_solve_and_cosh_profile(params, n):
    a, b, _ = _system(params, n)
    module = morphogen_steady_state(params, n_cells=n)
    steady = np.asarray(module(jnp.ones(1)))
    np.testing.assert_allclose(steady, np.linalg.solve(a, -b), rtol=1e-12)
    np.testing.assert_allclose(steady, _cosh_profile(params, n), rtol=1e-12)


def test_time_courses_match_matrix_exponential():
    times = np.linspace(0.5, 30.0, 13)
    for params in (MORPHOGEN_NOMINAL, OTHER):
        expected = _expm_course(params, 12, times)
        module = morphogen_line(times, params, n_cells=12, **TIGHT)
        np.testing.assert_allclose(module(jnp.ones(1)), expected, rtol=1e-8, atol=1e-12)
        # a subset of observed cells, and a doubled synthesis (u = 2) doubles c
        subset = morphogen_line(times, params, n_cells=12, observed=[0, 5, 11], **TIGHT)
        np.testing.assert_allclose(subset(2 * jnp.ones(1)), 2 * expected[:, [0, 5, 11]],
                                   rtol=1e-8, atol=1e-12)


def test_steady_state_fisher_has_rank_two_and_time_courses_rank_three():
    n = 12
    params = MORPHOGEN_NOMINAL
    a, b, laplacian = _system(params, n)
    steady = np.linalg.solve(a, -b)
    # c* = s M^-1 e0 with M = k I - D L: dc*/dlog D = D M^-1 L c*, dc*/dlog k = -k M^-1 c*,
    # dc*/dlog s = c*; the three sum to M^-1 (D L - k I) c* + c* = 0.
    m = -a
    analytic = np.stack([params["D"] * np.linalg.solve(m, laplacian @ steady),
                         -params["k"] * np.linalg.solve(m, steady), steady], axis=1)
    sigma = 0.05 * steady + 0.01
    names, jac = weighted_jacobian(morphogen_steady_state(params, n_cells=n), np.ones((1, 1)),
                                   sigma)
    assert names == ["D", "k", "s"]
    np.testing.assert_allclose(jac, analytic / sigma[:, None], rtol=1e-9, atol=1e-12)
    for j in (jac, analytic / sigma[:, None]):
        summary = fisher_summary(names, j)
        assert summary["rank"] == 2 and summary["ratio"] < 1e-13
        np.testing.assert_allclose(list(summary["weakest_direction"].values()),
                                   np.full(3, 3**-0.5), atol=1e-10)

    times = np.linspace(2.0, 40.0, 20)
    theta = np.log([params[k] for k in names])

    def course(t):
        return _expm_course(dict(zip(names, np.exp(t))), n, times).reshape(-1)

    h = 1e-5
    differences = np.stack([(course(theta + h * e) - course(theta - h * e)) / (2 * h)
                            for e in np.eye(3)], axis=1)
    sigma = 0.05 * course(theta) + 0.01
    names, jac = weighted_jacobian(morphogen_line(times, params, n_cells=n, **TIGHT),
                                   np.ones((1, 1)), sigma)
    np.testing.assert_allclose(jac, differences / sigma[:, None], rtol=1e-6, atol=1e-6)
    assert fisher_summary(names, differences / sigma[:, None])["ratio"] > 0.05
    assert fisher_summary(names, jac)["rank"] == 3


def test_french_flag_thresholds():
    c = np.random.default_rng(0).uniform(0, 2, size=(7, 9))
    c[0, :3] = [1.0, 0.3, 1.0 + 1e-12]  # on a threshold: the lower fate
    expected = np.array([[0 if x > 1.0 else 1 if x > 0.3 else 2 for x in row] for row in c])
    np.testing.assert_array_equal(french_flag(c, (1.0, 0.3)), expected)
    with pytest.raises(ValueError, match="high > low"):
        french_flag(c, (0.3, 1.0))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: morphogen_line([1.0], n_cells=1), "n_cells"),
        (lambda: morphogen_line([1.0], {"D": 1.0, "k": 0.1}), "exactly the parameters"),
        (lambda: morphogen_line([1.0], {"D": 1.0, "k": -0.1, "s": 1.0}), "positive"),
        (lambda: morphogen_steady_state(n_cells=4, observed=[4]), "observed"),
        (lambda: iptg_doses(1e-3, 1e-6), "low < high"),
        (lambda: dose_conditions([-1.0]), ">= 0"),
        (lambda: toggle_dose_response(time=0.0), "positive"),
    ],
)
def test_bad_input_is_a_clear_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_run_morphogen(tmp_path, capsys):
    summary = run_morphogen({}, tmp_path)
    for name in ("summary.json", "fit.png", "identifiability.png", "french_flag.png",
                 "loss.png"):
        assert (tmp_path / name).is_file()
    assert "D/k" in capsys.readouterr().out

    # (1) Time courses: D, k, s within the noise, the fit at least as good as the truth.
    fit = summary["time_course_fit"]
    assert fit["converged"]
    assert fit["loss"] <= fit["loss_at_truth"]
    assert fit["max_abs_z"] <= 3.0, fit["parameters"]

    # (2) Steady state: the ratios within the noise from every start, D k s kept from the
    # start (the fit never moves along the unidentifiable direction).
    fits = summary["steady_state_fits"]
    assert all(f["converged"] for f in fits)
    assert summary["max_abs_z_ratios"] <= 3.0
    for f in fits:
        volume = f["log_rate_sum"]
        assert abs(volume["fit"] - volume["start"]) < 1e-6
    low, high = fits[0], fits[-1]
    factor = high["start_factor"] / low["start_factor"]
    for name in ("D", "k", "s"):
        ratio = high["individual"][name]["estimate"] / low["individual"][name]["estimate"]
        np.testing.assert_allclose(ratio, factor, rtol=1e-6)
    for name in ("D/k", "s/k"):
        np.testing.assert_allclose(high["ratios"][name]["estimate"],
                                   low["ratios"][name]["estimate"], rtol=1e-6)
    assert min(abs(r["relative_error"]) for r in high["individual"].values()) > 0.5

    # (3) Identifiability: rank 2 against 3, a flat loss against a sharp minimum.
    ident = summary["identifiability"]
    assert ident["steady_state_fisher"]["rank"] == 2
    assert ident["steady_state_fisher"]["ratio"] < 1e-13
    assert ident["time_course_fisher"]["rank"] == 3
    assert ident["time_course_fisher"]["ratio"] > 0.05
    assert ident["steady_state_loss_max_relative_change"] < 1e-10
    assert min(ident["time_course_loss_rise"].values()) > 100
    assert 0.9 <= ident["time_course_argmin_factor"] <= 1.1

    # (4) The French flag of the closed-form steady state; steady-state fits predict it.
    flags = summary["french_flag"]["steady_state"]
    a, b, _ = _system(MORPHOGEN_NOMINAL, 12)
    expected = french_flag(np.linalg.solve(a, -b), summary["french_flag"]["thresholds"])
    for fates in flags.values():
        np.testing.assert_array_equal(fates, expected)
    assert sorted(set(flags["truth"])) == [0, 1, 2]


# ----------------------------------------------------------------------------- toggle


@pytest.mark.parametrize("read_out", [10.0, 50.0])
def test_dose_response_matches_scipy_reference(read_out):
    rows = [r for r in _toggle_reference() if r["time"] == read_out]
    doses = sorted({r["IPTG_M"] for r in rows})
    starts = list(TOGGLE_STARTS.values())
    conditions = dose_conditions(doses, starts)
    assert conditions.shape == (len(doses) * 2, 3)
    expected = np.array([[r["u"], r["v"]] for c in conditions for r in rows
                         if (r["IPTG_M"], r["u0"], r["v0"]) == tuple(c)])
    assert expected.shape == (len(conditions), 2)
    module = toggle_dose_response(time=read_out, **TIGHT)
    simulated = np.asarray(jax.vmap(module)(jnp.asarray(conditions)))[:, 0]
    np.testing.assert_allclose(simulated, expected, rtol=1e-7)
    problem = dose_response_problem(doses, **TIGHT)  # the same design for `recover`
    np.testing.assert_array_equal(problem.conditions, conditions)
    built = jax.vmap(problem.build((read_out,), TOGGLE_NOMINAL))(jnp.asarray(conditions))
    np.testing.assert_allclose(np.asarray(built)[:, 0], expected, rtol=1e-7)
    # bistable without IPTG (the starts stay apart), one state at 1 mM (up to the
    # transient still left at t = 10)
    u = simulated[:, 0].reshape(2, len(doses))
    assert u[1, 0] / u[0, 0] > 100
    np.testing.assert_allclose(u[0, -1], u[1, -1], rtol=1e-2)


def test_dose_grid_and_fisher_jacobian_against_central_differences():
    doses = iptg_doses(1e-6, 1e-3, 4)
    np.testing.assert_allclose(doses, [0.0, 1e-6, 1e-5, 1e-4, 1e-3], rtol=1e-12)
    conditions = dose_conditions([0.0, 3e-5], list(TOGGLE_STARTS.values()))
    module = toggle_dose_response(time=10.0, **TIGHT)
    sigma = np.full(8, 0.1)
    names, jac = weighted_jacobian(module, conditions, sigma)
    theta = np.log([TOGGLE_NOMINAL[n] for n in names])

    @jax.jit
    def outputs(t):
        m = eqx.tree_at(lambda m: m.params, module, dict(zip(names, t)))
        return jax.vmap(m)(jnp.asarray(conditions)).reshape(-1)

    h = 1e-5
    differences = np.stack([(outputs(theta + h * e) - outputs(theta - h * e)) / (2 * h)
                            for e in np.eye(len(names))], axis=1)
    np.testing.assert_allclose(jac, differences / 0.1, rtol=1e-5, atol=1e-5)


def test_run_toggle_dose_response(tmp_path):
    # the example's settings but two starts and a coarser profile, to keep the test short
    config = {"starts": 2, "profile": {"low": 0.3, "high": 1000.0, "num": 10}}
    summary = run_toggle_dose_response(config, tmp_path)
    for name in ("summary.json", "dose_response.png", "identifiability.png", "loss.png"):
        assert (tmp_path / name).is_file()
    assert summary["accepted"] and summary["converged"] and summary["starts_at_best"] >= 1
    assert summary["loss"] <= summary["loss_at_truth"]
    assert summary["max_abs_z"] <= 3.0, summary["parameters"]
    assert abs(summary["combinations"]["eta/K"]["z_score"]) <= 3.0
    fisher = summary["fisher"]
    assert all(f["rank"] == 6 for f in fisher.values())
    both, v_only = fisher["both initial states"], fisher["v_high initial state only"]
    # without the u-high start, a1 and beta trade off: ten times worse determined
    for name in ("a1", "beta"):
        assert v_only["standard_errors"][name] > 10 * both["standard_errors"][name]
    # K and eta are the weak pair; eta/K better determined than either
    errors = both["standard_errors"]
    assert min(errors["K"], errors["eta"]) > 5 * max(errors[n] for n in ("a1", "a2", "beta",
                                                                         "gamma"))
    assert summary["combinations"]["eta/K"]["standard_error"] < errors["eta"]

    # K's profile (the other five refitted): its minimum at the estimate, quadratic with
    # the Cramer-Rao curvature next to it, levelling off towards large K, where
    # (1 + IPTG/K)^eta tends to exp(IPTG eta/K).
    profile, k_hat = summary["profile_K"], summary["parameters"]["K"]["estimate"]
    assert all(profile["converged"])
    values, rise = np.asarray(profile["values"]), np.asarray(profile["losses"]) - summary["loss"]
    assert rise.min() > -1e-6
    low, high = profile["interval_95"]
    assert low < k_hat < high
    se = summary["parameters"]["K"]["standard_error"]
    near = np.argsort(np.abs(np.log(values / k_hat)))[1]
    np.testing.assert_allclose(rise[near], np.log(values[near] / k_hat) ** 2 / (2 * se**2),
                               rtol=0.3)
    assert 0 <= rise[-1] - rise[-2] < 0.05 * rise[-1]
