"""`modopt.Ros2` against closed forms: the linear least-squares flow
``w(s) = w* + expm(-s G^-1 A^T A)(w0 - w*)``, its order 2, its one-step limit (L-stability:
a step to infinity lands on the least-squares solution) and its stop event."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

import modopt

MASS = 2.0


def _least_squares(seed=0, m=30, n=5):
    a = jr.normal(jr.PRNGKey(seed), (m, n))
    b = jr.normal(jr.PRNGKey(seed + 1), (m, 1))
    model = modopt.Linear(n, 1, key=jr.PRNGKey(2), use_bias=False)
    model = eqx.tree_at(lambda m: m.weight, model, jnp.zeros((1, n)))
    w_star = np.linalg.lstsq(np.asarray(a), np.asarray(b), rcond=None)[0][:, 0]
    return model, a, b, w_star


def _exact(a, w_star, mass, s):
    h = np.asarray(a).T @ np.asarray(a)
    rate = np.linalg.solve(h + mass * np.eye(h.shape[0]), h)
    return w_star - scipy.linalg.expm(-s * rate) @ w_star  # w0 = 0


def _flow(model, a, b, **kwargs):
    return modopt.flow(model, modopt.losses.squared_error, a, b,
                       output_metric=modopt.metrics.Identity(), ode_solver=modopt.Ros2(),
                       **kwargs)


def test_ros2_follows_the_closed_form_flow_within_its_tolerance():
    model, a, b, w_star = _least_squares()
    errors = []
    for rtol in (1e-3, 1e-5):
        sol = _flow(model, a, b, mass=MASS, s1=3.0,
                    stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol * 1e-2))
        assert sol.result == modopt.RESULTS.successful
        errors.append(np.max(np.abs(np.asarray(sol.model.weight[0])
                                    - _exact(a, w_star, MASS, 3.0))))
    assert errors[0] < 1e-3 and errors[1] < 1e-5 and errors[1] < errors[0] / 30, errors


def test_ros2_has_order_two_with_constant_steps():
    model, a, b, w_star = _least_squares(seed=4)
    exact = _exact(a, w_star, MASS, 3.0)
    errors = []
    for h in (0.1, 0.05, 0.025):
        sol = _flow(model, a, b, mass=MASS, s1=3.0, dt0=h,
                    stepsize_controller=diffrax.ConstantStepSize())
        errors.append(np.max(np.abs(np.asarray(sol.model.weight[0]) - exact)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 3.3) & (ratios < 4.5)), ratios  # 4 for order 2


def test_one_long_ros2_step_lands_on_the_least_squares_solution():
    # L-stability: the stability function vanishes at infinity, so one step of length
    # 1e6 with a negligible mass is the Gauss-Newton step, exact for a linear model.
    model, a, b, w_star = _least_squares(seed=7)
    sol = _flow(model, a, b, mass=1e-9, s1=1e6, dt0=1e6,
                stepsize_controller=diffrax.ConstantStepSize())
    np.testing.assert_allclose(np.asarray(sol.model.weight[0]), w_star, rtol=1e-6)


def test_ros2_reaches_gtol_where_tsit5_runs_out_of_steps():
    # A small mass makes the flow stiff: rates lambda / (lambda + D) from ~1e-3 up to 1.
    model, a, b, _ = _least_squares(seed=9)
    kwargs = dict(mass=1e-3, s1=1e4, gtol=1e-10, max_steps=1000,
                  stepsize_controller=diffrax.PIDController(rtol=1e-2, atol=1e-4))
    sol = _flow(model, a, b, **kwargs)
    assert sol.result == modopt.RESULTS.event_occurred
    assert float(sol.riemannian_norm2) < 1e-10
    assert int(sol.stats["num_steps"]) < 100
    explicit = modopt.flow(model, modopt.losses.squared_error, a, b,
                           output_metric=modopt.metrics.Identity(), **kwargs)
    assert explicit.result == modopt.RESULTS.max_steps_reached


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_ros2_keeps_the_dtype_and_does_not_recompile(dtype):
    model, a, b, _ = _least_squares()
    model = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, model)
    a, b = a.astype(dtype), b.astype(dtype)
    traces = []

    @jax.jit
    def run(a, b):
        traces.append(1)
        sol = _flow(model, a, b, mass=MASS, s1=1.0,
                    stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-5))
        return sol.model.weight, sol.value

    w, _ = run(a, b)
    run(a * 2, b)
    assert w.dtype == dtype and len(traces) == 1
