"""Brayton-Moser circuits against independent references: the closed-form step response
of a series RLC loop, the settling / limit-cycle behaviour of a cubic-resistor circuit
and the stability theorem's verdict on it, the dP/dt identity against finite
differences of the saved potential, sensitivities against central finite differences,
and the energy metric inside riemannian_gradient against a dense numpy solve."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
from helpers import dense_reference_direction, tree_rel_error

import modopt
from modopt.systems.brayton_moser import (
    BraytonMoser,
    EnergyMetric,
    energy_metric,
    power_balance,
    stability_test,
)

TIGHT = dict(rtol=1e-11, atol=1e-13, max_steps=200_000)


_SOLVE = eqx.filter_jit(lambda m, u: m.solve(u))
_BATCH = eqx.filter_jit(lambda m, inputs: jax.vmap(m)(inputs))


def _solve(module, u):
    return _SOLVE(module, jnp.asarray(u))


# ----------------------------------------------------------------------------- RLC


def _rlc_potential(i, v, u, p):
    return jnp.sum(0.5 * p["R"] * i**2 - u * i + v * i)


def _rlc(times, solver=diffrax.Tsit5(), **options):
    params = {"R": jnp.array(10.0), "L": jnp.array(10e-3), "C": jnp.array(2.53303e-6)}
    return BraytonMoser(
        _rlc_potential, lambda i, p: p["L"], lambda v, p: p["C"], params,
        (np.zeros(1), np.zeros(1)), times, solver=solver, **options,
    )


def _rlc_step_response(ts, r, ind, cap, e):
    """Underdamped series RLC from rest, source step E at t = 0 (textbook formula)."""
    alpha = r / (2 * ind)
    wd = np.sqrt(1 / (ind * cap) - alpha**2)
    decay = np.exp(-alpha * ts)
    v = e * (1 - decay * (np.cos(wd * ts) + alpha / wd * np.sin(wd * ts)))
    i = e / (ind * wd) * decay * np.sin(wd * ts)
    return i, v


@pytest.mark.parametrize(
    "solver, options, tol",
    [
        (diffrax.Tsit5(), TIGHT, 1e-6),
        (diffrax.Kvaerno5(), dict(rtol=1e-9, atol=1e-11, max_steps=100_000), 1e-5),
    ],
    ids=["tsit5", "kvaerno5"],
)
def test_series_rlc_matches_closed_form_step_response(solver, options, tol):
    times = np.linspace(1e-5, 4e-3, 160)
    module = _rlc(times, solver, **options)
    solution = _solve(module, 1.0)
    assert solution.result == modopt.RESULTS.successful
    i_ref, v_ref = _rlc_step_response(times, 10.0, 10e-3, 2.53303e-6, 1.0)
    i, v = np.asarray(solution.states[0][:, 0]), np.asarray(solution.states[1][:, 0])
    assert np.max(np.abs(i - i_ref)) <= tol * np.max(np.abs(i_ref))
    assert np.max(np.abs(v - v_ref)) <= tol * np.max(np.abs(v_ref))
    # The default observable is the state [i, v].
    np.testing.assert_array_equal(solution.outputs, np.stack([i, v], axis=1))


# ----------------------------------------------------------------------------- cubic circuit


def _cubic_potential(i, v, u, p):
    i, v = i[0], v[0]
    return 0.5 * p["R"] * i**2 - u * i - (p["a"] * v**4 / 4 - p["b"] * v**2 / 2) + v * i


def _cubic(b, times, initial=(np.zeros(1), np.array([0.01])), **options):
    params = {"R": jnp.array(10.0), "a": jnp.array(1e-3), "b": jnp.array(b)}
    options = {**dict(rtol=1e-9, atol=1e-12, max_steps=100_000), **options}
    return BraytonMoser(_cubic_potential, 10e-3, 1e-6, params, initial, times, **options)


def _cubic_reference(b, times):
    """The same circuit written out by hand (L di/dt = -(R i + v), C dv/dt =
    i - a v^3 + b v, from i = 0, v = 0.01) and integrated by scipy's Radau."""
    r, ind, cap, a = 10.0, 10e-3, 1e-6, 1e-3

    def field(t, y):
        i, v = y
        return [-(r * i + v) / ind, (i - a * v**3 + b * v) / cap]

    solution = scipy.integrate.solve_ivp(field, (0.0, times[-1]), [0.0, 0.01], method="Radau",
                                         t_eval=times, rtol=1e-11, atol=1e-13)
    return solution.y[1]


def _period_from_upward_zero_crossings(ts, v):
    k = np.nonzero((v[:-1] < 0) & (v[1:] >= 0))[0]
    crossings = ts[k] - v[k] * (ts[k + 1] - ts[k]) / (v[k + 1] - v[k])
    return np.diff(crossings)


@pytest.mark.parametrize("b, settles", [(0.5e-3, True), (2e-3, False)])
def test_cubic_circuit_settles_or_oscillates_as_the_theorem_says(b, settles):
    # b < R C / L = 1e-3: theorem 1 holds and the circuit settles. b = 2e-3: the origin
    # is unstable and the circuit approaches a limit cycle near v ~ 1.15.
    times = np.linspace(0.0, 40e-3, 8001)[1:]
    module = _cubic(b, times)
    solution = _solve(module, 0.0)
    assert solution.result == modopt.RESULTS.successful
    v = np.asarray(solution.states[1][:, 0])
    late = times > 30e-3
    # The whole trajectory, limit cycle included, against an independent integration.
    np.testing.assert_allclose(v, _cubic_reference(b, times), rtol=0, atol=1e-6)
    report = stability_test(module, jnp.array(0.0), i_range=(-0.05, 0.05), v_range=(-2.0, 2.0))
    # mu1 = R / L everywhere, mu2 = min (3 a v^2 - b) / C = -b / C (at v = 0).
    assert report.mu1_min == pytest.approx(10.0 / 10e-3, rel=1e-9)
    assert report.mu2_min == pytest.approx(-b / 1e-6, rel=1e-9)
    assert report.constant_metrics
    if settles:
        assert np.max(np.abs(v[late])) < 1e-4
        assert report.stable and report.margin == pytest.approx(500.0, rel=1e-9)
        assert report.pstar_grows
        assert report.verdict.startswith("Stable")
    else:
        amplitude = np.max(np.abs(v[late]))
        # Sustained: the late envelope does not shrink.
        first, last = v[late][: len(v[late]) // 2], v[late][len(v[late]) // 2 :]
        assert abs(np.max(np.abs(last)) - np.max(np.abs(first))) <= 1e-3 * amplitude
        periods = _period_from_upward_zero_crossings(times[late], v[late])
        assert len(periods) >= 10
        assert abs(np.mean(periods) - 0.632e-3) <= 0.02 * 0.632e-3
        assert not report.stable and report.margin == pytest.approx(-1000.0, rel=1e-9)
        assert report.verdict.startswith("Not certified")


def test_stability_mu_match_generalized_eigenvalues():
    # A coupled two-loop circuit with non-diagonal L and C: mu1 and mu2 are the smallest
    # generalized eigenvalues of (A, L) and (B, C), from scipy.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 2))
    a = a @ a.T + 0.1 * np.eye(2)
    b = rng.standard_normal((2, 2))
    b = b @ b.T - 0.5 * np.eye(2)
    lmat = np.array([[2.0, 0.3], [0.3, 1.0]])
    cmat = np.array([[1.0, -0.2], [-0.2, 0.5]])
    coupling = rng.standard_normal((2, 2))

    def potential(i, v, u, p):
        return 0.5 * i @ p["A"] @ i - 0.5 * v @ p["B"] @ v + i @ p["G"] @ v

    params = {"A": jnp.asarray(a), "B": jnp.asarray(b), "G": jnp.asarray(coupling)}
    module = BraytonMoser(potential, lmat, cmat, params, (np.zeros(2), np.zeros(2)), [1.0])
    points = (rng.standard_normal((5, 2)), rng.standard_normal((5, 2)))
    report = stability_test(module, points=points)
    mu1 = scipy.linalg.eigh(a, lmat, eigvals_only=True)[0]
    mu2 = scipy.linalg.eigh(b, cmat, eigvals_only=True)[0]
    assert report.mu1_min == pytest.approx(mu1, rel=1e-12)
    assert report.mu2_min == pytest.approx(mu2, rel=1e-12)
    assert report.stable == (mu1 + mu2 > 0)
    assert report.pstar_grows is None and report.num_points == 5


# ----------------------------------------------------------------------------- dP/dt


def test_power_balance_holds_along_a_trajectory():
    # Nonlinear L(i) and C(v), so that both metrics vary along the trajectory.
    def inductance(i, p):
        return 10e-3 * (1 + (i / 0.02) ** 2)

    def capacitance(v, p):
        return 1e-6 * (1 + 0.3 * v**2)

    params = {"R": jnp.array(10.0), "a": jnp.array(1e-3), "b": jnp.array(2e-3)}
    times = np.linspace(0.0, 1e-3, 2001)
    module = BraytonMoser(
        _cubic_potential, inductance, capacitance, params,
        (np.array([0.005]), np.array([1.0])), times, **TIGHT,
    )
    solution = _solve(module, 0.0)
    balance = power_balance(module, solution, 0.0)
    # Both sides evaluated exactly at the saved states agree to rounding.
    assert float(balance.max_residual) <= 1e-12
    # The chain-rule side against a 4th-order finite difference of the saved P(t).
    p = np.asarray(balance.potential)
    h = times[1] - times[0]
    fd = (-p[4:] + 8 * p[3:-1] - 8 * p[1:-3] + p[:-4]) / (12 * h)
    exact = np.asarray(balance.balance)[2:-2]
    assert np.max(np.abs(fd - exact)) <= 1e-6 * np.max(np.abs(exact))
    # Both signs occur: the inductive and capacitive terms trade places.
    assert exact.min() < 0 < exact.max()


# ----------------------------------------------------------------------------- sensitivities


def _log_cubic(times, sensitivity):
    def inductance(i, p):
        return jnp.exp(p["logL"])

    def capacitance(v, p):
        return jnp.exp(p["logC"])

    def potential(i, v, u, p):
        q = {k: jnp.exp(p["log" + k]) for k in ("R", "a", "b")}
        return _cubic_potential(i, v, u, q)

    nominal = {"logR": 10.0, "logL": 10e-3, "logC": 1e-6, "loga": 1e-3, "logb": 2e-3}
    params = {k: jnp.log(jnp.array(x)) for k, x in nominal.items()}
    return BraytonMoser(
        potential, inductance, capacitance, params, (np.array([0.002]), np.array([0.5])),
        times, sensitivity=sensitivity, rtol=1e-12, atol=1e-15, max_steps=16_384,
    )


@pytest.mark.parametrize("sensitivity", ["forward", "reverse"])
def test_sensitivities_match_central_differences(sensitivity):
    times = np.linspace(0.1e-3, 1.5e-3, 12)
    module = _log_cubic(times, sensitivity)
    names = sorted(module.params)

    def f(theta):
        params = dict(zip(names, theta))
        return eqx.tree_at(lambda m: m.params, module, params)(jnp.array(0.3))

    theta0 = jnp.stack([module.params[n] for n in names])
    jac = jax.jacfwd(f) if sensitivity == "forward" else jax.jacrev(f)
    computed = np.asarray(jax.jit(jac)(theta0))  # (T, 2, n)
    f_jit = jax.jit(f)
    h = 1e-4
    columns = []
    for j in range(theta0.size):
        e = jnp.zeros_like(theta0).at[j].set(h)
        columns.append((f_jit(theta0 + e) - f_jit(theta0 - e)) / (2 * h))
    reference = np.stack(columns, axis=-1)
    # Currents and voltages have different units: scale each output and parameter.
    scale = np.max(np.abs(reference), axis=0, keepdims=True)
    assert np.max(np.abs(computed - reference) / scale) <= 1e-6


# ----------------------------------------------------------------------------- energy metric


def _nonlinear_rlc(times, sensitivity="auto"):
    def capacitance(v, p):
        return jnp.exp(p["logC"]) * (1 + 0.2 * v**2)

    def potential(i, v, u, p):
        return jnp.sum(0.5 * jnp.exp(p["logR"]) * i**2 - u * i + v * i)

    params = {
        "logR": jnp.log(jnp.array(10.0)),
        "logL": jnp.log(jnp.array(10e-3)),
        "logC": jnp.log(jnp.array(2.5e-6)),
    }
    return BraytonMoser(
        potential, lambda i, p: jnp.exp(p["logL"]), capacitance, params,
        (np.zeros(1), np.zeros(1)), times, sensitivity=sensitivity, **TIGHT,
    )


def _energy_matrix(predictions, ind, cap0):
    """``blockdiag(L, C(v))`` per sample and time, in numpy (sample-major)."""
    blocks = []
    for state in np.asarray(predictions, np.float64).reshape(-1, 2):
        blocks.append(np.diag([ind, cap0 * (1 + 0.2 * state[1] ** 2)]))
    return scipy.linalg.block_diag(*blocks)


def test_energy_metric_factor_is_a_root_of_the_energy_matrix():
    times = np.linspace(0.2e-3, 3e-3, 6)
    module = _nonlinear_rlc(times, "forward")
    predictions = _BATCH(module, jnp.array([1.0, 2.0]))
    factor = energy_metric(module).factor(predictions, None, None)
    dense = np.asarray(factor.dense())
    expected = _energy_matrix(predictions, 10e-3, 2.5e-6)
    np.testing.assert_allclose(dense.T @ dense, expected, rtol=1e-12, atol=1e-20)


def test_riemannian_gradient_with_energy_metric_matches_dense_solve():
    # Few parameters, many outputs: forward sensitivities (AutoJacobian picks forward).
    times = np.linspace(0.2e-3, 3e-3, 6)
    module = _nonlinear_rlc(times, "forward")
    inputs = jnp.array([1.0, 2.0])
    truth = eqx.tree_at(lambda m: m.params["logR"], module, jnp.log(jnp.array(14.0)))
    targets = _BATCH(truth, inputs)
    loss = modopt.losses.squared_error
    mass = 1e-7
    value, direction = eqx.filter_jit(
        lambda m: modopt.riemannian_gradient(
            m, loss, inputs, targets, output_metric=energy_metric(m), mass=mass,
        )
    )(module)
    predictions = _BATCH(module, inputs)
    m = _energy_matrix(predictions, 10e-3, 2.5e-6)
    ref_value, ref_direction = dense_reference_direction(
        module.with_sensitivity("forward"), loss, inputs, targets, m, mass,
    )
    assert abs(float(value) - ref_value) <= 1e-10 * abs(ref_value)
    assert tree_rel_error(direction.params, ref_direction.params) <= 1e-8


# ----------------------------------------------------------------------------- jit, dtype


def test_jit_does_not_retrace_and_dtypes_are_kept():
    traces = []

    @eqx.filter_jit
    def run(module, u):
        traces.append(1)
        return module(u)

    module = _rlc(np.linspace(1e-4, 1e-3, 5))
    out = run(module, jnp.array(1.0))
    assert out.dtype == jnp.float64
    run(eqx.tree_at(lambda m: m.params["R"], module, jnp.array(20.0)), jnp.array(1.0))
    assert len(traces) == 1  # new values, same structure: no retrace
    single = eqx.tree_at(
        lambda m: m.params, module, jax.tree.map(lambda x: x.astype(jnp.float32), module.params)
    )
    out32 = run(single, jnp.array(1.0, jnp.float32))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(out32, out, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(out))))


# ----------------------------------------------------------------------------- errors


def test_failed_integration_gives_result_code_and_nan():
    module = _rlc(np.linspace(1e-4, 4e-3, 10), max_steps=3)
    solution = _solve(module, 1.0)
    assert solution.result == modopt.RESULTS.integration_failed
    assert np.all(np.isnan(solution.outputs))
    assert all(np.all(np.isnan(x)) for x in solution.states)


def test_bad_inputs_give_clear_errors():
    times = [1e-3]
    with pytest.raises(ValueError, match="before t0"):
        _rlc(times, t0=2e-3)
    with pytest.raises(ValueError, match="pair"):
        BraytonMoser(_rlc_potential, 1.0, 1.0, {"R": jnp.array(1.0)}, np.zeros(3), times)
    with pytest.raises(ValueError, match="sensitivity"):
        _rlc(times, sensitivity="sideways")
    bad_potential = BraytonMoser(
        lambda i, v, u, p: p["R"] * i * v, 1.0, 1.0, {"R": jnp.array(1.0)},
        (np.zeros(1), np.zeros(1)), times,
    )
    with pytest.raises(ValueError, match="scalar"):
        bad_potential(0.0)
    bad_inductance = BraytonMoser(
        _rlc_potential, np.eye(3), 1.0, {"R": jnp.array(1.0)}, (np.zeros(2), np.zeros(2)),
        times,
    )
    with pytest.raises(ValueError, match="inductance"):
        bad_inductance(0.0)
    custom = BraytonMoser(
        _rlc_potential, 1.0, 1.0, {"R": jnp.array(1.0)}, (np.zeros(1), np.zeros(1)), times,
        observable=lambda t, i, v, u, p: v,
    )
    with pytest.raises(ValueError, match="custom observable"):
        energy_metric(custom)
    with pytest.raises(ValueError, match="n_i \\+ n_v"):
        EnergyMetric(2, 1.0, 1.0).factor(jnp.zeros((3, 4, 2)), None, None)
    with pytest.raises(ValueError, match="i_range"):
        stability_test(_rlc(times), jnp.array(1.0), v_range=(-1, 1))
    not_spd = BraytonMoser(
        _rlc_potential, -1.0, 1.0, {"R": jnp.array(1.0)}, (np.zeros(1), np.zeros(1)), times,
    )
    with pytest.raises(ValueError, match="positive definite"):
        stability_test(not_spd, jnp.array(1.0), i_range=(-1, 1), v_range=(-1, 1), num=3)
