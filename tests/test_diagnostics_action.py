"""The action principle on computed paths (DESIGN section 5).

References: ``v^T G v`` against the dense block metric of tests/helpers (jacfwd, numpy);
the action of a closed-form path (the exact flow of linear least squares with an
isotropic metric, where ``S = h(start) - h(end)`` and ``H = 0``); and the inequality
``S >= eta |h(start) - h(end)|`` and the shrinking gap on flow and step paths.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import dense_block_metric

import modopt
from modopt.diagnostics import metric_norm2, path_action

LOSS = modopt.losses.squared_error
METRIC = modopt.metrics.Identity()
MASS = 1e-2


def _regression(seed=0, n=24):
    x = jr.normal(jr.PRNGKey(seed), (n, 3))
    y = jnp.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
    model = modopt.mlp([3, 8, 1], key=jr.PRNGKey(seed + 1), activation=jnp.tanh)
    return model, x, y


def _flow_action(model, x, y, rtol, s1=3.0):
    sol = modopt.flow(model, LOSS, x, y, output_metric=METRIC, mass=MASS, s1=s1,
                      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol * 1e-3),
                      save_trajectory="steps", max_steps=2000)
    assert bool(sol.converged)
    return path_action(model, sol.trajectory, sol.trajectory_ts, LOSS, x, y,
                       output_metric=METRIC, mass=MASS)


def _steps_action(model, x, y, learning_rate, count):
    optimizer = modopt.RiemannianSteps(learning_rate, output_metric=METRIC, mass=MASS)
    state = optimizer.init(model)
    params = [eqx.filter(model, eqx.is_inexact_array)]
    for _ in range(count):
        updates, state = optimizer.update(model, state, LOSS, x, y)
        model = eqx.apply_updates(model, updates)
        params.append(eqx.filter(model, eqx.is_inexact_array))
    path = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)
    return path_action(model, path, jnp.arange(count + 1.0), LOSS, x, y,
                       output_metric=METRIC, mass=MASS, eta=learning_rate)


def test_metric_norm_matches_the_dense_block_metric():
    model, x, y = _regression()
    params = eqx.filter(model, eqx.is_inexact_array)
    velocity = jax.tree.map(lambda p: jr.normal(jr.PRNGKey(7), p.shape), params)
    flat_v = np.concatenate([np.ravel(v) for v in jax.tree.leaves(velocity)])
    dense = dense_block_metric(model, x, np.eye(x.shape[0]), MASS)
    expected = flat_v @ dense @ flat_v
    measured = metric_norm2(model, velocity, x, y, LOSS, output_metric=METRIC, mass=MASS)
    assert float(measured) == pytest.approx(expected, rel=1e-10)


def test_exact_flow_of_linear_least_squares_has_zero_gap_and_hamiltonian():
    # h = 0.5 |A w - b|^2, G = A^T A + m I (one block): the flow is w(s) = w* + e^{-sG^-1...}
    # in closed form w(s) = w* + V exp(-s Lambda / (Lambda + m)) V^T (w0 - w*).
    a = jr.normal(jr.PRNGKey(0), (20, 4))
    b = jr.normal(jr.PRNGKey(1), (20, 1))
    model = modopt.Linear(4, 1, key=jr.PRNGKey(2), use_bias=False)
    m = 0.5
    w_star = np.linalg.lstsq(np.asarray(a), np.asarray(b), rcond=None)[0][:, 0]
    gram = np.asarray(a).T @ np.asarray(a)
    lam, vec = np.linalg.eigh(gram)
    w0 = np.asarray(model.weight[0])
    ts = np.linspace(0.0, 2.0, 401)
    path_w = np.stack([w_star + vec @ (np.exp(-s * lam / (lam + m)) * (vec.T @ (w0 - w_star)))
                       for s in ts])
    path = eqx.filter(model, eqx.is_inexact_array)
    path = eqx.tree_at(lambda linear: linear.weight, path, jnp.asarray(path_w[:, None, :]))
    report = path_action(model, path, ts, LOSS, a, b, output_metric=METRIC, mass=m)
    decrease = float(report.losses[0] - report.losses[-1])
    assert decrease > 1.0
    # The secant of a smooth path: the gap is O(ds^2) of the action.
    assert 0 <= float(report.gap) <= 1e-4 * decrease
    assert float(report.max_abs_hamiltonian) <= 1e-4 * decrease


def test_action_bounds_the_decrease_on_every_computed_path():
    model, x, y = _regression()
    reports = [(1.0, _flow_action(model, x, y, rtol)) for rtol in (1e-2, 1e-4)]
    reports += [(lr, _steps_action(model, x, y, lr, 12)) for lr in (0.2, 0.5, 1.0)]
    for eta, report in reports:
        decrease = float(report.losses[0] - report.losses[int(report.segments)])
        assert decrease > 0.1
        assert float(report.action) >= eta * abs(decrease) * (1 - 1e-12), report.summary()
        assert float(report.gap) >= -1e-10 * float(report.action)


def test_gap_and_hamiltonian_shrink_with_the_flow_tolerance_and_exceed_for_steps():
    model, x, y = _regression(seed=3)
    rtols = np.array([1e-2, 1e-3, 1e-4, 1e-5])
    reports = [_flow_action(model, x, y, rtol) for rtol in rtols]
    gaps = np.array([float(r.gap) for r in reports])
    hamiltonians = np.array([float(r.mean_abs_hamiltonian) for r in reports])
    assert np.all(np.diff(gaps) < 0), gaps
    assert np.all(np.diff(hamiltonians) < 0), hamiltonians
    # Both ~ rtol^rate: a 5th-order solver's steps scale like rtol^(1/5); the secant
    # strays from the flow like the square of the step, so rate ~ 2/5.
    for measured in (gaps, hamiltonians):
        rate = np.polyfit(np.log(rtols), np.log(measured), 1)[0]
        assert 0.15 < rate < 1.0, (rate, measured)
    steps = _steps_action(model, x, y, 0.5, 12)
    assert float(steps.gap) > 10 * gaps[0]
    assert float(steps.mean_abs_hamiltonian) > 10 * hamiltonians[0]


def test_bad_paths_are_rejected():
    model, x, y = _regression()
    path = jax.tree.map(lambda p: jnp.stack([p, p]), eqx.filter(model, eqx.is_inexact_array))
    with pytest.raises(ValueError, match="the path has"):
        path_action(model, path, jnp.arange(3.0), LOSS, x, y, output_metric=METRIC, mass=MASS)
    with pytest.raises(ValueError, match="odd"):
        path_action(model, path, jnp.arange(2.0), LOSS, x, y, output_metric=METRIC,
                    mass=MASS, nodes=2)
    with pytest.raises(ValueError, match="save_trajectory"):
        modopt.flow(model, LOSS, x, y, output_metric=METRIC, mass=MASS,
                    save_trajectory="every step")


def test_padding_is_dropped_outside_jit_and_masked_inside():
    model, x, y = _regression()
    sol = modopt.flow(model, LOSS, x, y, output_metric=METRIC, mass=MASS, s1=3.0,
                      save_trajectory="steps", max_steps=200)
    points = int(np.sum(np.isfinite(np.asarray(sol.trajectory_ts))))
    assert 2 < points < 200  # the solution is padded

    def action(path, ts):
        return path_action(model, path, ts, LOSS, x, y, output_metric=METRIC, mass=MASS)

    eager = action(sol.trajectory, sol.trajectory_ts)
    masked = eqx.filter_jit(action)(sol.trajectory, sol.trajectory_ts)
    trimmed = action(jax.tree.map(lambda leaf: leaf[:points], sol.trajectory),
                     sol.trajectory_ts[:points])
    assert eager.losses.shape == trimmed.losses.shape == (points,)
    assert int(masked.segments) == int(eager.segments) == points - 1
    for name in ("action", "gap", "kinetic", "potential", "mean_abs_hamiltonian"):
        np.testing.assert_allclose(getattr(masked, name), getattr(eager, name), rtol=1e-10,
                                   err_msg=name)
        np.testing.assert_allclose(getattr(trimmed, name), getattr(eager, name), rtol=0,
                                   err_msg=name)
