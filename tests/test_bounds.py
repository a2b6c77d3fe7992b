"""`modopt.Box`: Coleman-Li scaled steps against a dense NumPy reference."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import modopt


def _linear_problem(dtype):
    a = jr.normal(jr.PRNGKey(0), (12, 4), dtype)
    b = 10 * jr.normal(jr.PRNGKey(1), (12, 1), dtype)
    model = modopt.Linear(4, 1, key=jr.PRNGKey(2), use_bias=False, dtype=dtype)
    return model, a, b


def _reference_step(A, b, w, lower, upper, mass, cap):
    """The Coleman-Li scaled, capped and clipped Levenberg-Marquardt step, by hand."""
    g = A.T @ (A @ w - b)
    v = np.where(g > 0, w - lower, np.where(g < 0, upper - w, 1.0))
    v = np.where(np.isfinite(v), v, 1.0)
    step = -np.linalg.solve(A.T @ A + np.diag((mass + np.abs(g)) / v), g)
    norm = np.sqrt(np.sum(step**2 / v))
    if cap is not None and norm > cap:
        step *= cap / norm
    return np.clip(w + step, lower, upper) - w


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("cap", [None, 0.05])
def test_box_step_is_the_coleman_li_scaled_step(dtype, cap):
    model, a, b = _linear_problem(dtype)
    A, w, bb = np.asarray(a, float), np.asarray(model.weight[0], float), np.asarray(b, float)[:, 0]
    # One parameter close to the bound its gradient pushes it to, one unbounded, and one
    # whose step would leave the box.
    g = A.T @ (A @ w - bb)
    lower = np.where(g > 0, w - np.array([1e-3, 5.0, -np.inf, 0.02]), -np.inf)
    upper = np.where(g < 0, w + np.array([1e-3, 5.0, np.inf, 0.02]), np.inf)
    box = modopt.Box(eqx.tree_at(lambda m: m.weight, model, jnp.asarray(lower[None], dtype)),
                     eqx.tree_at(lambda m: m.weight, model, jnp.asarray(upper[None], dtype)))
    opt = modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=0.1,
                                 max_norm=cap, box=box)
    updates, _ = eqx.filter_jit(opt.update)(model, opt.init(model),
                                            modopt.losses.squared_error, a, b)
    assert updates.weight.dtype == dtype
    want = _reference_step(A, bb, w, lower, upper, 0.1, cap)
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(updates.weight[0], want, rtol=tol, atol=tol * 1e-2)
    new = w + np.asarray(updates.weight[0], float)
    assert np.all((new >= lower - 1e-6) & (new <= upper + 1e-6))


def test_parameter_on_the_bound_it_is_pushed_against_stays_there():
    model, a, b = _linear_problem(jnp.float64)
    A, w, bb = np.asarray(a), np.asarray(model.weight[0]), np.asarray(b)[:, 0]
    g = A.T @ (A @ w - bb)
    on_bound = np.where(g > 0, w, -np.inf)[None], np.where(g < 0, w, np.inf)[None]
    box = modopt.Box(*(eqx.tree_at(lambda m: m.weight, model, jnp.asarray(x)) for x in on_bound))
    opt = modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=0.1, box=box)
    updates, state = opt.update(model, opt.init(model), modopt.losses.squared_error, a, b)
    assert np.max(np.abs(updates.weight)) < 1e-9
    assert float(state.riemannian_norm2) < 1e-9 * float(g @ g)  # held: no descent left


def test_box_of_the_wrong_structure_is_a_clear_error():
    model, a, b = _linear_problem(jnp.float64)
    opt = modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=0.1,
                                 box=modopt.Box([0.0, 1.0], [2.0, 3.0]))
    with pytest.raises(ValueError, match="Box: lower and upper must have the structure"):
        opt.update(model, opt.init(model), modopt.losses.squared_error, a, b)


def test_box_with_a_lower_bound_above_the_upper_is_a_clear_error():
    with pytest.raises(ValueError, match="lower bound is above its upper bound in leaf 1"):
        modopt.Box([0.0, jnp.array([1.0, 5.0])], [2.0, jnp.array([3.0, 4.0])])
