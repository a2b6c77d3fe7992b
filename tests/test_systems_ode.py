"""ODE modules against independent references: a closed form, the scipy toggle-switch
trajectories, central finite differences and CasADi's CVODES forward sensitivities;
then the engine's forward and reverse Jacobians against a dense solve, jit/dtype, and
failures (max_steps, blow-up) that give a result code and never NaN parameters."""

import csv
from pathlib import Path

import casadi
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import dense_reference_direction, tree_rel_error

import modopt
from modopt.bio import TOGGLE_NOMINAL, toggle_switch
from modopt.systems import ODEModule

DATA = Path(__file__).parent / "data" / "models"
TIGHT = dict(rtol=1e-11, atol=1e-12, max_steps=100_000)


def test_linear_decay_matches_closed_form():
    times = np.linspace(0.1, 2.0, 9)
    module = ODEModule(
        lambda t, x, u, p: -p["k"] * x + u, {"k": jnp.array(1.7)}, np.array([2.0]), times, **TIGHT
    )
    u = 0.3
    expected = u / 1.7 + (2.0 - u / 1.7) * np.exp(-1.7 * times)
    np.testing.assert_allclose(module(jnp.array(u))[:, 0], expected, rtol=1e-9)


def _toggle_reference():
    with open(DATA / "toggle_gardner2000_scipy_reference.csv") as file:
        rows = list(csv.DictReader(file))
    conditions = sorted({(float(r["IPTG_M"]), float(r["u0"]), float(r["v0"])) for r in rows})
    times = sorted({float(r["time"]) for r in rows if float(r["time"]) > 0})
    states = np.array([
        [[float(r["u"]), float(r["v"])] for r in rows
         if (float(r["IPTG_M"]), float(r["u0"]), float(r["v0"])) == c and float(r["time"]) > 0]
        for c in conditions
    ])
    return np.array(conditions), np.array(times), states


def test_toggle_switch_matches_scipy_reference():
    conditions, times, expected = _toggle_reference()
    module = toggle_switch(times, **TIGHT)
    simulated = jax.vmap(module)(jnp.asarray(conditions))
    np.testing.assert_allclose(simulated, expected, rtol=1e-7)


def _toggle_flat(times, sensitivity):
    """Outputs of the toggle module as a function of its 6 log-parameters."""
    module = toggle_switch(times, sensitivity=sensitivity, **TIGHT)
    names = sorted(TOGGLE_NOMINAL)
    condition = jnp.array([1e-5, 0.1, 10.0])

    def f(theta):
        params = dict(zip(names, theta))
        return eqx.tree_at(lambda m: m.params, module, params)(condition).reshape(-1)

    theta0 = jnp.log(jnp.array([TOGGLE_NOMINAL[n] for n in names]))
    return f, theta0, names


def _central_differences(f, theta, h=1e-5):
    columns = []
    for j in range(theta.size):
        e = jnp.zeros_like(theta).at[j].set(h)
        columns.append((f(theta + e) - f(theta - e)) / (2 * h))
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("sensitivity", ["forward", "reverse"])
def test_sensitivities_match_central_differences(sensitivity):
    times = np.linspace(0.5, 10.0, 20)
    f, theta0, _ = _toggle_flat(times, sensitivity)
    jac = jax.jacfwd(f) if sensitivity == "forward" else jax.jacrev(f)
    computed = np.asarray(jax.jit(jac)(theta0))
    reference = _central_differences(jax.jit(f), theta0)
    scale = np.max(np.abs(reference), axis=0)
    assert np.max(np.abs(computed - reference) / scale) <= 1e-6


def test_sensitivities_match_cvodes_forward_sensitivities():
    times = np.linspace(0.5, 10.0, 20)
    f, theta0, names = _toggle_flat(times, "forward")
    computed = np.asarray(jax.jit(jax.jacfwd(f))(theta0)).reshape(len(times), 2, -1)

    # The same model written in CasADi symbols, integrated by CVODES with its own
    # forward sensitivities (the Jacobian of the integrator's output in p).
    x = casadi.SX.sym("x", 2)
    p = casadi.SX.sym("p", 6)
    r = dict(zip(names, [casadi.exp(p[i]) for i in range(6)]))
    iptg = 1e-5
    repressor = x[0] / (1 + iptg / r["K"]) ** r["eta"]
    ode = casadi.vertcat(
        r["a1"] / (1 + x[1] ** r["beta"]) - x[0],
        r["a2"] / (1 + repressor ** r["gamma"]) - x[1],
    )
    integrator = casadi.integrator(
        "F", "cvodes", {"x": x, "p": p, "ode": ode}, 0.0, list(times),
        {"abstol": 1e-12, "reltol": 1e-12, "fsens_err_con": True},
    )
    x0 = casadi.MX.sym("x0", 2)
    pm = casadi.MX.sym("p", 6)
    xf = integrator(x0=x0, p=pm)["xf"]
    sens = casadi.Function("sens", [x0, pm], [casadi.jacobian(xf, pm)])
    reference = np.array(sens([0.1, 10.0], np.asarray(theta0))).reshape(2, len(times), 6, order="F")
    reference = reference.transpose(1, 0, 2)
    scale = np.max(np.abs(reference), axis=(0, 1))
    assert np.max(np.abs(computed - reference) / scale) <= 1e-6


@pytest.mark.parametrize("jacobian", [modopt.Forward(), modopt.Reverse(), modopt.AutoJacobian()])
def test_riemannian_gradient_matches_dense_reference(jacobian):
    times = np.linspace(1.0, 8.0, 8)
    module = toggle_switch(times, **TIGHT)
    conditions = jnp.array([[0.0, 0.1, 10.0], [1e-5, 10.0, 0.1], [1e-4, 0.1, 10.0]])
    targets = jax.vmap(toggle_switch(times, {**TOGGLE_NOMINAL, "a1": 120.0}, **TIGHT))(conditions)
    loss = modopt.losses.squared_error
    value, direction = modopt.riemannian_gradient(
        module, loss, conditions, targets, output_metric=modopt.metrics.Identity(),
        mass=1e-2, jacobian=jacobian,
    )
    ref_value, ref_direction = dense_reference_direction(
        module.with_sensitivity("forward"), loss, conditions, targets,
        np.eye(targets.size), 1e-2,
    )
    assert abs(float(value) - ref_value) <= 1e-10 * abs(ref_value)
    assert tree_rel_error(direction.params, ref_direction.params) <= 1e-8


def test_auto_picks_forward_for_few_parameters_and_mixing_modes_is_an_error():
    from modopt.jacobian import pullback_mode

    module = toggle_switch(np.linspace(1.0, 8.0, 8))
    assert pullback_mode(module, modopt.AutoJacobian(), 6, 16) == "forward"
    assert pullback_mode(module, modopt.AutoJacobian(), 60, 16) == "structured"
    both = modopt.Parallel(
        [module.with_sensitivity("forward"), module.with_sensitivity("reverse")],
        layout="tuple",
    )
    with pytest.raises(ValueError, match="forward.*reverse"):
        pullback_mode(both, modopt.AutoJacobian(), 12, 16)
    with pytest.raises(ValueError, match="contradicts"):
        pullback_mode(module.with_sensitivity("reverse"), modopt.Forward(), 6, 16)


def test_jit_does_not_retrace_and_dtypes_are_kept():
    traces = []

    @eqx.filter_jit
    def run(module, condition):
        traces.append(1)
        return module(condition)

    times = np.linspace(1.0, 5.0, 5)
    for dtype in (jnp.float32, jnp.float64):
        module = toggle_switch(times, dtype=dtype)
        out = run(module, jnp.array([0.0, 0.1, 10.0], dtype))
        assert out.dtype == dtype
    count = len(traces)
    other = toggle_switch(times, {**TOGGLE_NOMINAL, "a1": 100.0})
    run(other, jnp.array([1e-5, 10.0, 0.1]))
    assert len(traces) == count  # new values, same structure: no retrace


def _blow_up_module(**options):
    # x' = w x^2 from x(0) = 0.1 blows up at t = 10 / w: past t = 2 when w > 5.
    return ODEModule(
        lambda t, x, u, p: p["w"] * x**2, {"w": jnp.array(2.0)}, np.array([0.1]),
        np.linspace(0.5, 2.0, 4), **options,
    )


@pytest.mark.parametrize(
    "options",
    [dict(max_steps=3), dict(solver=diffrax.Kvaerno5(), max_steps=4096)],
    ids=["max_steps", "stiff_blow_up"],
)
def test_failed_integration_gives_result_code_and_nan(options):
    module = eqx.tree_at(lambda m: m.params["w"], _blow_up_module(**options), jnp.array(8.0))
    solution = eqx.filter_jit(lambda m: m.solve(None))(module)
    assert solution.result == modopt.RESULTS.integration_failed
    assert np.all(np.isnan(solution.outputs))
    throwing = eqx.tree_at(lambda m: m.params["w"], _blow_up_module(throw=True, **options),
                           jnp.array(8.0))
    with pytest.raises(Exception, match="stiff implicit solver"):
        jax.block_until_ready(eqx.filter_jit(lambda m: m(None))(throwing))


def test_optimizer_rejects_failed_integration_and_carries_on():
    module = _blow_up_module(rtol=1e-8, atol=1e-10)
    targets = _blow_up_module(rtol=1e-8, atol=1e-10)(None)[None]  # data from w = 2
    start = eqx.tree_at(lambda m: m.params["w"], module, jnp.array(1.0))
    # A huge learning rate throws the first trial step past w = 5, where the solve fails.
    opt = modopt.RiemannianSteps(
        200.0, output_metric=modopt.metrics.Identity(), mass=1e-3,
        adaptive_mass=modopt.AdaptiveMass(increase=10.0),
    )
    loss = modopt.losses.squared_error
    state = opt.init(start)
    step = eqx.filter_jit(lambda m, s: opt.update(m, s, loss, jnp.zeros((1, 0)), targets))
    model, rejected = start, 0
    for _ in range(60):
        updates, state = step(model, state)
        rejected += int(~state.accepted)
        model = eqx.apply_updates(model, updates)
        assert np.isfinite(float(model.params["w"]))
    assert rejected >= 1
    assert abs(float(model.params["w"]) - 2.0) <= 1e-6


def test_bad_construction_errors():
    field = lambda t, x, u, p: -x  # noqa: E731
    with pytest.raises(ValueError, match="strictly increasing"):
        ODEModule(field, {"k": jnp.array(1.0)}, np.array([1.0]), [2.0, 1.0])
    with pytest.raises(ValueError, match="before t0"):
        ODEModule(field, {"k": jnp.array(1.0)}, np.array([1.0]), [0.5, 1.0], t0=1.0)
    with pytest.raises(ValueError, match="sensitivity"):
        ODEModule(field, {"k": jnp.array(1.0)}, np.array([1.0]), [1.0], sensitivity="sideways")


def test_trainable_initial_state_has_closed_form_derivatives():
    times = np.linspace(0.2, 2.0, 5)
    module = ODEModule(
        lambda t, x, u, p: -p["k"] * x, {"k": jnp.array(0.8), "x0": jnp.array([1.5])},
        lambda u, p: p["x0"], times, **TIGHT,
    )
    grads = jax.jacrev(lambda m: m(None)[:, 0])(module).params
    np.testing.assert_allclose(grads["x0"][:, 0], np.exp(-0.8 * times), rtol=1e-9)
    np.testing.assert_allclose(grads["k"], -times * 1.5 * np.exp(-0.8 * times), rtol=1e-9)


def test_stiff_robertson_with_kvaerno5_matches_scipy_radau():
    from scipy.integrate import solve_ivp

    def field(t, y, u, p):
        k1, k2, k3 = p["k"]
        return jnp.stack([
            -k1 * y[0] + k3 * y[1] * y[2],
            k1 * y[0] - k3 * y[1] * y[2] - k2 * y[1] ** 2,
            k2 * y[1] ** 2,
        ])

    rates = np.array([0.04, 3e7, 1e4])
    times = np.array([0.4, 4.0, 40.0, 400.0])
    module = ODEModule(field, {"k": jnp.asarray(rates)}, np.array([1.0, 0.0, 0.0]), times,
                       solver=diffrax.Kvaerno5(), rtol=1e-10, atol=1e-14, max_steps=100_000)
    computed = np.asarray(module(None))

    def rhs(t, y):
        return np.asarray(field(t, y, None, {"k": rates}))

    reference = solve_ivp(rhs, (0.0, 400.0), [1.0, 0.0, 0.0], method="Radau", t_eval=times,
                          rtol=1e-12, atol=1e-16).y.T
    np.testing.assert_allclose(computed, reference, rtol=1e-6, atol=1e-14)
