"""Output metrics M = L^T L and their factors L (DESIGN section 3).

A metric acts on the flattened batch of predictions ``y`` (``d = batch * outputs``
entries, sample-major). It returns a *factor*:

- `SampleFactor`: block diagonal over samples; sample ``n`` has its own ``q x p`` block
  ``rows[n]``, so ``M`` never couples two samples. Identity, Diagonal and the
  Gauss-Newton metric of a per-sample loss are of this kind, which lets the Jacobian
  be built one sample at a time.
- `DenseFactor`: a full ``r x d`` matrix, for metrics that couple samples.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


class SampleFactor(eqx.Module):
    """A factor block diagonal over samples: ``rows`` of shape ``(batch, q, p)``."""

    rows: Array

    def dense(self) -> Array:
        """The ``(batch*q) x (batch*p)`` matrix (for tests and references)."""
        b, q, p = self.rows.shape
        eye = jnp.eye(b, dtype=self.rows.dtype)
        return jnp.einsum("nkp,nm->nkmp", self.rows, eye).reshape(b * q, b * p)


class DenseFactor(eqx.Module):
    """A full factor ``matrix`` of shape ``(r, d)``."""

    matrix: Array

    def dense(self) -> Array:
        return self.matrix


class AbstractOutputMetric(eqx.Module):
    """An output metric: yields a factor ``L`` with ``L^T L = M(y)``."""

    @abc.abstractmethod
    def factor(self, predictions: Array, targets, loss_fn: Callable) -> SampleFactor | DenseFactor:
        """The factor at `predictions` (shape ``(batch, *out)``)."""


def _eigh_root(matrix: Array) -> tuple[Array, Array]:
    """Eigenvalues and the root ``R`` (``R^T R``) of the PSD part of a symmetric matrix."""
    matrix = 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
    values, vectors = jnp.linalg.eigh(matrix)
    root = jnp.sqrt(jnp.clip(values, 0.0))[..., :, None] * jnp.swapaxes(vectors, -1, -2)
    return values, root


def _psd_root(matrix: Array, where: str, tol: float) -> Array:
    """An exact root ``R`` (``R^T R = matrix``) of a symmetric PSD matrix, by eigh.

    Singular matrices are fine (no Cholesky). A matrix with an eigenvalue below
    ``-tol * max|eigenvalue|`` raises at run time (``eqx.error_if``).
    """
    values, root = _eigh_root(matrix)
    scale = jnp.max(jnp.abs(values), axis=-1, keepdims=True)
    return eqx.error_if(
        root,
        jnp.any(values < -tol * scale) | ~jnp.all(jnp.isfinite(values)),
        f"{where}: the output metric is not positive semidefinite (or not finite). "
        "Check the matrix or function you passed.",
    )


def _psd_part_root(matrix: Array) -> Array:
    """Root of the positive semidefinite part (negative eigenvalues dropped)."""
    return _eigh_root(matrix)[1]


def _check_concrete_psd(matrix, where: str, tol: float) -> None:
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return  # traced: checked at run time instead
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{where}: the metric must be a square matrix, got shape {m.shape}.")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{where}: the metric has non-finite entries.")
    if not np.allclose(m, m.T, rtol=1e-10, atol=1e-12 * np.max(np.abs(m), initial=1.0)):
        raise ValueError(f"{where}: the metric matrix is not symmetric.")
    values = np.linalg.eigvalsh(m)
    if values.min() < -tol * max(np.abs(values).max(), 1e-300):
        raise ValueError(
            f"{where}: the metric is not positive semidefinite (smallest eigenvalue "
            f"{values.min():.3e}). A metric must satisfy v^T M v >= 0 for every v."
        )


class Identity(AbstractOutputMetric):
    """``M = I``: the Euclidean metric on outputs (least squares)."""

    def factor(self, predictions, targets, loss_fn):
        batch = predictions.shape[0]
        p = int(np.prod(predictions.shape[1:]))
        eye = jnp.eye(p, dtype=predictions.dtype)
        return SampleFactor(jnp.broadcast_to(eye, (batch, p, p)))


class Diagonal(AbstractOutputMetric):
    """``M = diag(weights)``, e.g. ``1 / sigma^2`` for independent measurement noise.

    **Arguments:** `weights`, non-negative, of shape ``(d,)``, ``(batch, *out)`` or
    ``(*out)`` (the same for every sample), or a scalar.

    **Raises:** `ValueError` for negative or non-finite concrete weights; at run time
    (inside jit) through ``eqx.error_if``.
    """

    weights: Array

    def __init__(self, weights):
        try:
            concrete = np.asarray(weights, dtype=np.float64)
        except (TypeError, jax.errors.TracerArrayConversionError):
            concrete = None
        if concrete is not None and (
            not np.all(np.isfinite(concrete)) or np.any(concrete < 0)
        ):
            raise ValueError(
                "Diagonal: weights must be finite and non-negative (a metric must be "
                f"positive semidefinite); smallest weight {concrete.min():.3e}."
            )
        self.weights = jnp.asarray(weights)

    def factor(self, predictions, targets, loss_fn):
        batch = predictions.shape[0]
        p = int(np.prod(predictions.shape[1:]))
        w = jnp.asarray(self.weights, predictions.dtype)
        if w.size == batch * p:
            w = w.reshape(batch, p)
        else:
            try:
                w = jnp.broadcast_to(w.reshape(-1) if w.ndim else w, (batch, p))
            except ValueError:
                raise ValueError(
                    f"Diagonal: weights of shape {self.weights.shape} do not fit "
                    f"predictions of shape {predictions.shape}."
                ) from None
        w = eqx.error_if(
            w, jnp.any(w < 0) | ~jnp.all(jnp.isfinite(w)),
            "Diagonal: weights must be finite and non-negative.",
        )
        return SampleFactor(jax.vmap(jnp.diag)(jnp.sqrt(w)))


class Dense(AbstractOutputMetric):
    """A full metric matrix ``M`` (``d x d``) on the flattened batch of predictions.

    **Arguments:**

    - `matrix`: the metric ``M`` itself, or a function ``predictions -> M``. For a noise
      covariance ``Sigma`` use `Dense.from_covariance` (``M = Sigma^-1``).
    - `tol`: eigenvalues down to ``-tol * max|eigenvalue|`` count as zero.

    The factor is an exact root from a symmetric eigendecomposition, so a singular
    (semidefinite) ``M`` is fine.

    **Raises:** `ValueError` at construction for a concrete matrix that is not square,
    symmetric and positive semidefinite; a runtime error (``eqx.error_if``) for a
    function whose value is not.
    """

    matrix: Array | Callable[[Array], Array]
    tol: float = eqx.field(static=True)

    def __init__(self, matrix, *, tol: float = 1e-10):
        if not callable(matrix):
            _check_concrete_psd(matrix, "Dense", tol)
            matrix = jnp.asarray(matrix)
        self.matrix = matrix
        self.tol = tol

    @classmethod
    def from_covariance(cls, covariance, *, tol: float = 1e-10) -> Dense:
        """The metric ``M = covariance^-1`` of correlated Gaussian noise."""
        cov = np.asarray(covariance, dtype=np.float64)
        _check_concrete_psd(cov, "Dense.from_covariance", tol)
        return cls(np.linalg.inv(cov).astype(np.asarray(covariance).dtype), tol=tol)

    def factor(self, predictions, targets, loss_fn):
        d = predictions.size
        m = self.matrix(predictions) if callable(self.matrix) else self.matrix
        m = jnp.asarray(m, predictions.dtype)
        if m.shape != (d, d):
            raise ValueError(
                f"Dense: the metric has shape {m.shape} but the flattened predictions "
                f"have d = {d} entries; it must be ({d}, {d})."
            )
        return DenseFactor(_psd_root(m, "Dense", self.tol))


class GaussNewton(AbstractOutputMetric):
    """The Gauss-Newton metric ``M = d^2 loss / dy^2`` (its PSD part).

    - If the loss has a ``hessian_factor(predictions, targets)`` method (every loss in
      `modopt.losses` has), that exact factor is used: for softmax cross-entropy the
      singular root ``diag(sqrt p) - sqrt(p) p^T``, with no Cholesky.
    - Else with ``separable=True`` (the loss is a sum over samples) the per-sample
      ``p x p`` Hessian blocks come from ``p`` Hessian-vector products.
    - Else the full ``d x d`` Hessian is formed by autodiff (cost ``O(d^3)``).

    Negative curvature is dropped (the positive semidefinite part is kept).
    """

    separable: bool = eqx.field(static=True, default=False)

    def factor(self, predictions, targets, loss_fn):
        if hasattr(loss_fn, "hessian_factor"):
            return SampleFactor(loss_fn.hessian_factor(predictions, targets))
        batch = predictions.shape[0]
        p = int(np.prod(predictions.shape[1:]))
        shape = predictions.shape

        def grad_flat(y):
            return jax.grad(lambda z: loss_fn(z.reshape(shape), targets))(y).reshape(-1)

        y = predictions.reshape(-1)
        if self.separable:
            basis = jnp.tile(jnp.eye(p, dtype=y.dtype), (1, batch))  # (p, batch*p)
            columns = jax.vmap(lambda v: jax.jvp(grad_flat, (y,), (v,))[1])(basis)
            blocks = columns.reshape(p, batch, p).transpose(1, 2, 0)
            return SampleFactor(_psd_part_root(blocks))
        hessian = jax.jacfwd(grad_flat)(y)
        return DenseFactor(_psd_part_root(hessian))
