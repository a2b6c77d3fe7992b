"""The flow against closed forms: exponential residual decay, the least-squares optimum,
the stop event, Euler = one discrete step, and a NaN met on the way."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import modopt

TIGHT = diffrax.PIDController(rtol=1e-10, atol=1e-12)


def _least_squares(seed=0, m=30, n=5):
    a = jr.normal(jr.PRNGKey(seed), (m, n))
    b = jr.normal(jr.PRNGKey(seed + 1), (m, 1))
    model = modopt.Linear(n, 1, key=jr.PRNGKey(2), use_bias=False)
    model = eqx.tree_at(lambda m: m.weight, model, jnp.zeros((1, n)))
    return model, a, b


def test_residual_decays_like_exp_minus_s():
    # One block, tiny mass: dy/ds = -(y - y*) with y* the projection of b, so the
    # loss 0.5|Aw - b|^2 = l* + 0.5 e^{-2s} |y0 - y*|^2.
    model, a, b = _least_squares()
    sol = modopt.flow(
        model, modopt.losses.squared_error, a, b, output_metric=modopt.metrics.Identity(),
        mass=1e-12, s1=5.0, stepsize_controller=TIGHT, max_steps=100_000,
    )
    w_star = np.linalg.lstsq(np.asarray(a), np.asarray(b), rcond=None)[0]
    y_star = np.asarray(a) @ w_star
    l_star = 0.5 * np.sum((y_star - np.asarray(b)) ** 2)
    excess0 = 0.5 * np.sum(y_star**2)  # y0 = 0
    s = np.asarray(sol.ts)
    expected = l_star + excess0 * np.exp(-2 * s)
    measured_excess = np.asarray(sol.losses) - l_star
    predicted_excess = expected - l_star
    # Relative error of the decaying part (the residual y - y*), at s = 5 in particular.
    rel = np.abs(measured_excess - predicted_excess) / predicted_excess
    assert rel[-1] <= 1e-3, rel[-1]
    assert np.max(rel) <= 1e-3
    assert bool(sol.converged)


def test_flow_ends_at_least_squares_solution():
    model, a, b = _least_squares(seed=3)
    sol = modopt.flow(
        model, modopt.losses.squared_error, a, b, output_metric=modopt.metrics.Identity(),
        mass=1e-12, s1=30.0, stepsize_controller=TIGHT, max_steps=100_000,
    )
    w_star = np.linalg.lstsq(np.asarray(a), np.asarray(b), rcond=None)[0][:, 0]
    w = np.asarray(sol.model.weight[0])
    assert np.max(np.abs(w - w_star)) / np.max(np.abs(w_star)) <= 1e-8


def test_stop_event_fires():
    model, a, b = _least_squares(seed=5)
    sol = modopt.flow(
        model, modopt.losses.squared_error, a, b, output_metric=modopt.metrics.Identity(),
        mass=1e-12, s1=1000.0, gtol=1e-6, stepsize_controller=TIGHT, max_steps=100_000,
    )
    assert sol.result == modopt.RESULTS.event_occurred
    assert float(sol.riemannian_norm2) < 1e-6
    # It stopped early, not at s1: unreached save times hold inf.
    assert np.isinf(np.asarray(sol.losses)[-1])
    # Without the event the same flow runs to s1.
    sol_full = modopt.flow(
        model, modopt.losses.squared_error, a, b, output_metric=modopt.metrics.Identity(),
        mass=1e-12, s1=20.0, stepsize_controller=TIGHT, max_steps=100_000,
    )
    assert sol_full.result == modopt.RESULTS.successful


def test_one_euler_step_equals_one_discrete_step():
    model = modopt.mlp([3, 6, 2], key=jr.PRNGKey(0))
    x = jr.normal(jr.PRNGKey(1), (8, 3))
    y = jr.normal(jr.PRNGKey(2), (8, 2))
    h = 0.3
    kwargs = dict(output_metric=modopt.metrics.Identity(), mass=0.5)
    sol = modopt.flow(
        model, modopt.losses.squared_error, x, y, s1=h, dt0=h, ode_solver=diffrax.Euler(),
        stepsize_controller=diffrax.ConstantStepSize(), **kwargs,
    )
    opt = modopt.RiemannianSteps(h, **kwargs)
    updates, _ = opt.update(model, opt.init(model), modopt.losses.squared_error, x, y)
    stepped = eqx.apply_updates(model, updates)
    for got, want in zip(jax.tree.leaves(sol.model), jax.tree.leaves(stepped)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert int(sol.stats["num_steps"]) == 1


def _cliff_loss(predictions, targets):
    # Finite while the prediction stays below 0.2; NaN beyond (a model leaving its domain).
    pred = predictions[0, 0]
    return jnp.where(pred > 0.2, jnp.nan, 0.5 * jnp.sum((predictions - targets) ** 2))


@pytest.mark.parametrize("adaptive", [True, False])
def test_nan_during_flow_gives_result_code_and_last_good_state(adaptive):
    model = modopt.Linear(1, 1, key=jr.PRNGKey(0), use_bias=False)
    model = eqx.tree_at(lambda m: m.weight, model, jnp.zeros((1, 1)))
    x, y = jnp.ones((1, 1)), jnp.ones((1, 1))  # the optimum w = 1 lies past the cliff
    extra = {} if adaptive else dict(
        ode_solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize(), dt0=0.5
    )
    sol = modopt.flow(
        model, _cliff_loss, x, y, output_metric=modopt.metrics.Identity(), mass=1.0,
        s1=10.0, **extra,
    )
    assert sol.result == modopt.RESULTS.nonfinite_step
    assert not bool(sol.converged)
    assert np.isfinite(float(sol.value))
    assert 0.0 < float(sol.model.weight[0, 0]) <= 0.2
    assert "last finite state" in modopt.RESULTS[sol.result]
    with pytest.raises(Exception, match="non-finite"):
        modopt.flow(
            model, _cliff_loss, x, y, output_metric=modopt.metrics.Identity(), mass=1.0,
            s1=10.0, throw=True, **extra,
        )


def test_bad_flow_arguments():
    model, a, b = _least_squares()
    with pytest.raises(ValueError, match="s1"):
        modopt.flow(model, modopt.losses.squared_error, a, b,
                    output_metric=modopt.metrics.Identity(), mass=1.0, s1=-1.0)
    with pytest.raises(ValueError, match="dt0"):
        modopt.flow(model, modopt.losses.squared_error, a, b,
                    output_metric=modopt.metrics.Identity(), mass=1.0,
                    stepsize_controller=diffrax.ConstantStepSize())


@pytest.mark.parametrize("ode_solver", [diffrax.Tsit5(), modopt.Ros2()])
def test_flow_in_a_box_ends_at_the_bounded_least_squares_solution(ode_solver):
    from scipy.optimize import lsq_linear

    model, a, b = _least_squares(seed=11)
    unbounded = np.linalg.lstsq(np.asarray(a), np.asarray(b), rcond=None)[0][:, 0]
    # Bounds that cut off the unconstrained optimum in some coordinates.
    upper = np.where(unbounded > 0, 0.5 * unbounded, 1.0)
    lower = np.where(unbounded < 0, 0.5 * unbounded, -1.0)
    reference = lsq_linear(np.asarray(a), np.asarray(b)[:, 0], bounds=(lower, upper),
                           tol=1e-14).x
    box = modopt.Box(eqx.tree_at(lambda m: m.weight, eqx.filter(model, eqx.is_inexact_array),
                                 jnp.asarray(lower)[None]),
                     eqx.tree_at(lambda m: m.weight, eqx.filter(model, eqx.is_inexact_array),
                                 jnp.asarray(upper)[None]))
    sol = modopt.flow(
        model, modopt.losses.squared_error, a, b, output_metric=modopt.metrics.Identity(),
        mass=1e-3, s1=200.0, box=box, ode_solver=ode_solver, max_steps=20_000,
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
    )
    w = np.asarray(sol.model.weight[0])
    assert np.all(w >= lower) and np.all(w <= upper)
    np.testing.assert_allclose(w, reference, atol=1e-4)


@pytest.mark.parametrize("ode_solver, rtol", [(modopt.Ros2(), 0.1), (diffrax.Tsit5(), 1e-4)])
def test_a_flow_pushed_into_a_corner_of_its_box_reaches_it(ode_solver, rtol):
    # Two nearly collinear columns and an optimum beyond both upper bounds: the
    # Gauss-Newton part of the metric outweighs the box's mass, so steps overshoot the
    # bounds. Rejecting them shrank the steps to nothing (max_steps or nonfinite_step);
    # clipped, the flow ends in the corner that scipy's bounded least squares finds.
    from scipy.optimize import lsq_linear

    a = jnp.array([[1.0, 1.0], [1.0, 1.01], [0.0, 0.01]])
    b = jnp.array([[3.0], [3.0], [1.0]])
    model = modopt.Linear(2, 1, key=jr.PRNGKey(0), use_bias=False)
    model = eqx.tree_at(lambda m: m.weight, model, jnp.zeros((1, 2)))
    params = eqx.filter(model, eqx.is_inexact_array)
    box = modopt.Box(eqx.tree_at(lambda m: m.weight, params, -jnp.ones((1, 2))),
                     eqx.tree_at(lambda m: m.weight, params, jnp.ones((1, 2))))
    reference = lsq_linear(np.asarray(a), np.asarray(b)[:, 0], bounds=(-1.0, 1.0)).x
    sol = modopt.flow(
        model, modopt.losses.squared_error, a, b, output_metric=modopt.metrics.Identity(),
        mass=1e-3, s1=60.0, box=box, ode_solver=ode_solver, max_steps=200,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=1e-2 * rtol),
    )
    assert sol.result == modopt.RESULTS.successful
    np.testing.assert_allclose(np.asarray(sol.model.weight[0]), reference, atol=1e-6)
