"""Each output metric's factor L satisfies L^T L = M for an independently formed M."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loss_hessian, metric_matrix_for, psd_part

from modopt import metrics
from modopt.losses import SquaredError, softmax_cross_entropy, squared_error

RNG = np.random.default_rng(123)
BATCH, OUT = 6, 4
PRED = jnp.asarray(RNG.standard_normal((BATCH, OUT)))
TARG = jnp.asarray(RNG.standard_normal((BATCH, OUT)))
D = BATCH * OUT


def logcosh_loss(p, t):
    r = p - t
    return jnp.sum(jnp.logaddexp(r, -r) - jnp.log(2.0))


def cauchy_loss(p, t):
    """Separable with negative curvature where |r| > 1 (exercises the PSD part)."""
    return jnp.sum(jnp.log1p((p - t) ** 2))


def _gram(metric, loss_fn=squared_error, pred=PRED, targ=TARG):
    lmat = np.asarray(metric.factor(pred, targ, loss_fn).dense(), np.float64)
    return lmat.T @ lmat


def _close(a, b, tol=1e-12):
    assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b)))


def test_identity():
    m = metrics.Identity()
    _close(_gram(m), metric_matrix_for(m, PRED, TARG, squared_error))
    _close(_gram(m), np.eye(D))


@pytest.mark.parametrize("shape", [(D,), (BATCH, OUT), (OUT,), ()])
def test_diagonal(shape):
    w = RNG.uniform(0.0, 3.0, shape)
    m = metrics.Diagonal(jnp.asarray(w))
    if w.size == D:
        expected = np.diag(w.reshape(-1))
    else:
        expected = np.diag(np.broadcast_to(w, (BATCH, OUT)).reshape(-1))
    _close(_gram(m), expected)
    _close(_gram(m), metric_matrix_for(m, PRED, TARG, squared_error))


@pytest.mark.parametrize("rank", [D, D - 5])
def test_dense_matrix(rank):
    a = RNG.standard_normal((D, rank))
    mat = a @ a.T  # singular when rank < D
    m = metrics.Dense(mat)
    _close(_gram(m), mat)


def test_dense_function_and_covariance():
    a = RNG.standard_normal((D, D))
    cov = a @ a.T / D + np.eye(D)
    m = metrics.Dense.from_covariance(cov)
    _close(_gram(m), np.linalg.inv(cov), 1e-10)
    f = metrics.Dense(lambda p: jnp.diag(1.0 + p.reshape(-1) ** 2))
    _close(_gram(f), np.diag(1.0 + np.asarray(PRED).reshape(-1) ** 2))


def test_gauss_newton_squared_error():
    for scale in (1.0, 4.0):
        loss = SquaredError(scale=scale)
        m = metrics.GaussNewton()
        _close(_gram(m, loss), loss_hessian(loss, PRED, TARG))
        _close(_gram(m, loss), metric_matrix_for(m, PRED, TARG, loss))


def test_softmax_cross_entropy_factor_is_hessian_root():
    labels = jnp.asarray(RNG.integers(0, OUT, BATCH))
    logits = PRED * 3.0
    factor = metrics.GaussNewton().factor(logits, labels, softmax_cross_entropy)
    assert isinstance(factor, metrics.SampleFactor)
    hess = loss_hessian(softmax_cross_entropy, logits, labels)
    _close(_gram(metrics.GaussNewton(), softmax_cross_entropy, logits, labels), hess)
    rows = np.asarray(factor.rows)
    for n in range(BATCH):
        assert np.linalg.matrix_rank(rows[n], tol=1e-10) == OUT - 1
        block = hess[n * OUT:(n + 1) * OUT, n * OUT:(n + 1) * OUT]
        assert np.linalg.matrix_rank(block, tol=1e-12) == OUT - 1


@pytest.mark.parametrize("loss_fn", [logcosh_loss, cauchy_loss])
def test_gauss_newton_separable_equals_full_hessian(loss_fn):
    pred = PRED * 2.0
    sep = metrics.GaussNewton(separable=True)
    full = metrics.GaussNewton()
    assert isinstance(sep.factor(pred, TARG, loss_fn), metrics.SampleFactor)
    assert isinstance(full.factor(pred, TARG, loss_fn), metrics.DenseFactor)
    expected = psd_part(loss_hessian(loss_fn, pred, TARG))
    _close(_gram(sep, loss_fn, pred), expected)
    _close(_gram(full, loss_fn, pred), expected)
    if loss_fn is logcosh_loss:  # convex: the PSD part is the Hessian itself
        _close(_gram(sep, loss_fn, pred), loss_hessian(loss_fn, pred, TARG))
    else:  # negative curvature really occurred and was dropped
        assert np.linalg.eigvalsh(loss_hessian(loss_fn, pred, TARG)).min() < -1e-3


def test_gauss_newton_non_separable_loss():
    def coupled(p, t):
        r = (p - t).reshape(-1)
        return 0.5 * jnp.sum(r**2) + jnp.log1p(jnp.sum(r) ** 2)

    m = metrics.GaussNewton()
    _close(_gram(m, coupled), psd_part(loss_hessian(coupled, PRED, TARG)))
