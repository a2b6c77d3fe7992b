"""`StepState.undamped_norm2`: ``g^T u`` at the adaptive mass's least scale, against a
dense float64 solve; on a plateau it is large where the damped norm is small."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import modopt

MASS, LEAST = 0.1, 1e-6


def _problem(slope):
    """``y = slope * A w`` against targets ``b``; a small `slope` is a plateau."""
    a = slope * jr.normal(jr.PRNGKey(3), (10, 3), jnp.float64)
    b = jr.normal(jr.PRNGKey(4), (10, 1), jnp.float64)
    model = modopt.Linear(3, 1, key=jr.PRNGKey(5), use_bias=False, dtype=jnp.float64)
    return model, a, b


def _norms(model, a, b, box=None):
    opt = modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=MASS,
                                 adaptive_mass=modopt.AdaptiveMass(min_scale=LEAST,
                                                                   undamped_norm=True),
                                 box=box)
    _, state = eqx.filter_jit(opt.update)(model, opt.init(model),
                                          modopt.losses.squared_error, a, b)
    return float(state.riemannian_norm2), float(state.undamped_norm2)


def _dense(A, w, b, mass, distance=None):
    """``g^T G^-1 g``; with a box, the Coleman-Li mass ``(mass + |g|) / v``."""
    g = A.T @ (A @ w - b)
    diagonal = np.full_like(g, mass) if distance is None else (mass + np.abs(g)) / distance(g)
    return float(g @ np.linalg.solve(A.T @ A + np.diag(diagonal), g))


@pytest.mark.parametrize("slope", [1.0, 1e-4])
def test_undamped_norm_is_the_norm_at_the_least_mass(slope):
    model, a, b = _problem(slope)
    A, w, bb = np.asarray(a), np.asarray(model.weight[0]), np.asarray(b)[:, 0]
    damped, undamped = _norms(model, a, b)
    np.testing.assert_allclose(damped, _dense(A, w, bb, MASS), rtol=1e-9)
    np.testing.assert_allclose(undamped, _dense(A, w, bb, MASS * LEAST), rtol=1e-9)


def test_undamped_norm_with_a_box_uses_the_coleman_li_mass():
    model, a, b = _problem(1.0)
    A, w, bb = np.asarray(a), np.asarray(model.weight[0]), np.asarray(b)[:, 0]
    lower, upper = w - np.array([0.5, 1.0, 2.0]), w + np.array([2.0, 0.3, 1.0])
    box = modopt.Box(*(eqx.tree_at(lambda m: m.weight, model, jnp.asarray(x[None]))
                       for x in (lower, upper)))

    def v(g):  # the distance to the bound that the gradient pushes towards
        return np.where(g > 0, w - lower, upper - w)

    damped, undamped = _norms(model, a, b, box)
    np.testing.assert_allclose(damped, _dense(A, w, bb, MASS, v), rtol=1e-9)
    np.testing.assert_allclose(undamped, _dense(A, w, bb, MASS * LEAST, v), rtol=1e-9)


def test_on_a_plateau_only_the_damped_norm_is_small():
    """Where the outputs hardly depend on the parameters the mass makes the damped norm
    tiny, though a Gauss-Newton step would still explain much of the residual."""
    model, a, b = _problem(1e-4)
    damped, undamped = _norms(model, a, b)
    assert damped < 1e-6 < 1e-2 < undamped


def test_undamped_norm_is_not_computed_unless_asked():
    model, a, b = _problem(1.0)
    opt = modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=MASS,
                                 adaptive_mass=modopt.AdaptiveMass(min_scale=LEAST))
    _, state = eqx.filter_jit(opt.update)(model, opt.init(model),
                                          modopt.losses.squared_error, a, b)
    assert np.isnan(float(state.undamped_norm2)) and np.isfinite(float(state.riemannian_norm2))
