"""Contraction quantities against dense float64 references: the generalised NTK
``J G^-1 J^T`` with ``G`` the dense block-diagonal metric (tests/helpers, numpy solve), its
smallest eigenvalue, the per-sample Jacobian norms and the squared error's gradient."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import dense_block_metric, full_jacobian, metric_matrix_for

import modopt
from modopt.diagnostics import contraction

LOSS = modopt.losses.squared_error


def _per_sample(prediction, target):
    return 0.5 * jnp.sum((prediction - target) ** 2)


@pytest.mark.parametrize("metric_name", ["identity", "dense", "gauss_newton"])
@pytest.mark.parametrize("mass", [1e-2, 0.5])
def test_contraction_rate_is_the_smallest_eigenvalue_of_the_dense_ntk(metric_name, mass):
    x = jr.normal(jr.PRNGKey(0), (6, 3))
    y = jr.normal(jr.PRNGKey(1), (6, 2))
    model = modopt.mlp([3, 5, 2], key=jr.PRNGKey(2), activation=jnp.tanh)
    metric = {
        "identity": modopt.metrics.Identity(),
        "dense": modopt.metrics.Dense(np.eye(12) + 0.3 * np.ones((12, 12))),
        "gauss_newton": modopt.metrics.GaussNewton(),
    }[metric_name]
    predictions = jnp.stack([model(xi) for xi in x])
    m = metric_matrix_for(metric, predictions, y, LOSS)
    j = full_jacobian(model, x)
    g = dense_block_metric(model, x, m, mass)
    ntk = j @ np.linalg.solve(g, j.T)
    eigenvalues = np.linalg.eigvalsh(0.5 * (ntk + ntk.T))

    result = contraction(model, LOSS, x, y, output_metric=metric, mass=mass,
                         per_sample_loss=_per_sample)
    assert np.max(np.abs(np.asarray(result.ntk) - ntk)) <= 1e-10 * np.max(np.abs(ntk))
    assert eigenvalues[0] > 1e-3
    assert abs(float(result.xi) - eigenvalues[0]) <= 1e-8 * max(1.0, abs(eigenvalues[0]))

    kappa = max(np.linalg.norm(j[2 * i:2 * i + 2], 2) for i in range(6))
    assert float(result.kappa) == pytest.approx(kappa, rel=1e-10)
    residual = np.asarray(predictions - y)
    assert float(result.loss_gradient_bound) == pytest.approx(
        np.max(np.linalg.norm(residual, axis=1)), rel=1e-12)
    assert float(result.mu) == mass
    expected = 2 * np.sqrt(6) * kappa**2 * float(result.loss_gradient_bound) / (
        eigenvalues[0] * mass)
    assert float(result.stability_bound) == pytest.approx(expected, rel=1e-7)
