"""Losses that know the exact root of their Hessian (for `metrics.GaussNewton`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array


class SquaredError(eqx.Module):
    """``0.5 * sum((predictions - targets)^2) / scale``; least squares.

    With the default ``scale=1`` its Gauss-Newton metric is the identity.
    """

    scale: float = eqx.field(static=True, default=1.0)

    def __call__(self, predictions: Array, targets: Array) -> Array:
        return 0.5 * jnp.sum((predictions - targets) ** 2) / self.scale

    def hessian_factor(self, predictions, targets) -> Array:
        batch = predictions.shape[0]
        p = predictions[0].size
        eye = jnp.eye(p, dtype=predictions.dtype) / jnp.sqrt(self.scale)
        return jnp.broadcast_to(eye, (batch, p, p))


class SoftmaxCrossEntropy(eqx.Module):
    """Mean over the batch of the softmax cross-entropy of logits and integer labels.

    The exact Hessian root per sample is ``(diag(sqrt p) - sqrt(p) p^T) / sqrt(batch)``
    with ``p = softmax(logits)``: singular (rank ``classes - 1``), no Cholesky.
    """

    def __call__(self, logits: Array, labels: Array) -> Array:
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)
        return -jnp.mean(picked)

    def hessian_factor(self, logits, labels) -> Array:
        batch = logits.shape[0]
        p = jax.nn.softmax(logits, axis=-1)
        s = jnp.sqrt(p)
        root = jax.vmap(jnp.diag)(s) - s[:, :, None] * p[:, None, :]
        return root / jnp.sqrt(jnp.asarray(batch, logits.dtype))


squared_error = SquaredError()
softmax_cross_entropy = SoftmaxCrossEntropy()
