"""Per-block solves of ``(D + K^T K) u = g`` (DESIGN section 2).

`woodbury_solve` (dual, ``r x r`` Cholesky) and `primal_solve` (``n x n`` Cholesky) are
the two forms; `dense_reference_solve` forms the full matrix in NumPy float64 and is
kept for tests and benchmarks only.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array


class AbstractBlockSolver(eqx.Module):
    """How to solve one block's system: `Woodbury`, `Primal` or `AutoSolve`."""

    @abc.abstractmethod
    def use_dual(self, rows: int, size: int) -> bool:
        """Whether a block with `rows` rows of ``K`` and `size` parameters uses Woodbury."""


class Woodbury(AbstractBlockSolver):
    """Always the dual (Woodbury) form: cost ``O(n r^2 + r^3)``, memory ``O(n r)``."""

    def use_dual(self, rows, size):
        return True


class Primal(AbstractBlockSolver):
    """Always the primal form: cost ``O(n^2 r + n^3)``."""

    def use_dual(self, rows, size):
        return False


class AutoSolve(AbstractBlockSolver):
    """The cheaper form per block, by shape: dual when ``r < n`` (the default)."""

    def use_dual(self, rows, size):
        return rows < size


def _cho_solve(matrix: Array, rhs: Array) -> Array:
    factor = jsl.cho_factor(matrix, lower=True)
    return jsl.cho_solve(factor, rhs)


def woodbury_solve(k: Array, g: Array, dinv: Array) -> Array:
    """``u = (D + K^T K)^-1 g`` as ``A - D^-1 K^T (I + K D^-1 K^T)^-1 K A``, ``A = D^-1 g``.

    **Arguments:** `k` ``(r, n)``, `g` ``(n,)``, `dinv` the inverse mass, ``()`` or ``(n,)``.
    """
    a = dinv * g
    kd = k * dinv
    s = jnp.eye(k.shape[0], dtype=k.dtype) + kd @ k.T
    v = _cho_solve(s, k @ a)
    return a - kd.T @ v


def primal_solve(k: Array, g: Array, dinv: Array) -> Array:
    """``u = (D + K^T K)^-1 g`` by an ``n x n`` Cholesky."""
    d = jnp.broadcast_to(1 / dinv, g.shape)
    return _cho_solve(k.T @ k + jnp.diag(d), g)


def gram_woodbury_solve(delta, x, g_w, g_b, mass_w, mass_b):
    """Woodbury solve for a `Linear` block without forming ``K``.

    Row ``(n, k)`` of ``K`` is ``vec(delta[n, k] x[n]^T)`` (and ``delta[n, k]`` for the
    bias), so with masses ``mass_w`` (weight) and ``mass_b`` (bias)
    ``K D^-1 K^T = (delta delta^T) * (x x^T / mass_w + 1 / mass_b)`` elementwise over
    sample pairs: an input Gram matrix times a cotangent Gram matrix.

    **Arguments:** `delta` ``(batch, q, out)`` pulled-back cotangents at the layer's
    output, `x` ``(batch, in)`` the layer's inputs, `g_w` ``(out, in)``, `g_b`
    ``(out,)`` or ``None``, scalar masses.

    **Returns:** ``(u_w, u_b)``.
    """
    batch, q, _ = delta.shape
    a_w = g_w / mass_w
    z = x @ a_w.T
    gram_x = x @ x.T / mass_w
    if g_b is not None:
        a_b = g_b / mass_b
        z = z + a_b
        gram_x = gram_x + 1 / mass_b
    ka = jnp.einsum("nko,no->nk", delta, z).reshape(-1)
    gram_delta = jnp.einsum("nko,mlo->nkml", delta, delta)
    s = (gram_delta * gram_x[:, None, :, None]).reshape(batch * q, batch * q)
    s = s + jnp.eye(batch * q, dtype=s.dtype)
    v = _cho_solve(s, ka).reshape(batch, q)
    back = jnp.einsum("nk,nko->no", v, delta)
    u_w = a_w - back.T @ x / mass_w
    u_b = None if g_b is None else a_b - back.sum(0) / mass_b
    return u_w, u_b


def dense_reference_solve(k, g, mass) -> np.ndarray:
    """``(D + K^T K)^-1 g`` with the full matrix in NumPy float64 (tests, benchmarks)."""
    k = np.asarray(k, np.float64)
    g = np.asarray(g, np.float64)
    d = np.broadcast_to(np.asarray(mass, np.float64), g.shape)
    return np.linalg.solve(k.T @ k + np.diag(d), g)
