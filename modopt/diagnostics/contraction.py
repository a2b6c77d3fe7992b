"""Contraction and algorithmic stability (DESIGN section 6, the paper's Theorem 3).

Along the flow the stacked outputs move as ``ydot = -H grad_y(l)`` with the generalised
neural tangent kernel

    H = J G^-1 J^T = sum_a J_a (D_a + J_a^T M J_a)^-1 J_a^T      (G block diagonal),

so for the summed squared error ``l = sum_i 1/2 |y_i - t_i|^2`` they contract at the rate
``xi``, the smallest eigenvalue of ``H``. With ``kappa`` a bound of every sample's output
Jacobian, ``L`` one of the per-sample loss gradient and ``mu`` the smallest mass,
replacing one of the ``n`` training samples changes the gradient by at most
``2 kappa L``, the parameter velocity by ``2 kappa L / mu`` and the stacked outputs'
velocity by ``sqrt(n) kappa`` times that; contraction at rate ``xi`` turns this into

    |y_S - y_S'| <= 2 sqrt(n) kappa^2 L / (xi mu).

This is the paper's ``2 kappa^2 L / (xi' sqrt(n) mu)`` written with the rate of the
mean-squared loss, ``xi' = xi / n``. The change of ``G`` itself (sample k's term in
``J^T M J``) is neglected, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._blocks import block_diagonal
from ..metrics import AbstractOutputMetric
from ._forward import forward_parts


class Contraction(eqx.Module):
    """The contraction quantities at one point (see `contraction`).

    - `ntk`: the generalised NTK ``H`` (``N x N``, ``N = samples * outputs``).
    - `xi`: its smallest eigenvalue, the contraction rate.
    - `kappa`: the largest spectral norm of one sample's output Jacobian ``dy_i/dw``.
    - `loss_gradient_bound`: ``L``, the largest ``|d l_i / d y_i|`` of one sample's loss.
    - `mu`: the smallest entry of the mass ``D``.
    - `samples`: ``n``.
    """

    ntk: jax.Array
    xi: jax.Array
    kappa: jax.Array
    loss_gradient_bound: jax.Array
    mu: jax.Array
    samples: int = eqx.field(static=True)

    @property
    def stability_bound(self) -> jax.Array:
        """``2 sqrt(n) kappa^2 L / (xi mu)``: the bound on the change of the stacked
        outputs when one sample is replaced (summed squared error; module docstring)."""
        return (2 * jnp.sqrt(self.samples) * self.kappa**2 * self.loss_gradient_bound
                / (self.xi * self.mu))


def generalised_ntk(model, inputs, targets, loss_fn: Callable, *,
                    output_metric: AbstractOutputMetric, mass, blocks=None) -> jax.Array:
    """``H = sum_a J_a G_a^-1 J_a^T`` (``N x N``) with ``G_a = D_a + J_a^T M J_a``.

    Each block's term is formed in the dual (Woodbury) form from ``A = J_a D_a^-1 J_a^T``:
    ``A - A F^T (I + F A F^T)^-1 F A`` with ``M = F^T F``: ``O(N^2 n_a + N^3)``.
    """
    parts = forward_parts(model, mass, blocks)
    part, masses, dtype = parts.part, parts.masses, parts.dtype
    factor = output_metric.factor(parts.outputs(parts.params, inputs), targets, loss_fn).dense()
    jacobian = jax.jacfwd(lambda p: parts.outputs(p, inputs).reshape(-1))(parts.params)
    columns = parts.blocks_of(jacobian)  # one (N, n_a) matrix per block
    ntk = jnp.zeros((columns[0].shape[0],) * 2, dtype)
    for b, j_a in enumerate(columns):
        d_inv = 1 / block_diagonal(masses[b], [part.shapes[i] for i in part.members[b]])
        a = (j_a * d_inv) @ j_a.T
        fa = factor @ a
        inner = jnp.eye(factor.shape[0], dtype=dtype) + fa @ factor.T
        ntk = ntk + a - fa.T @ jnp.linalg.solve(inner, fa)
    return 0.5 * (ntk + ntk.T)


def contraction(model, loss_fn: Callable, inputs, targets, *,
                output_metric: AbstractOutputMetric, mass, per_sample_loss: Callable,
                blocks=None) -> Contraction:
    """The contraction rate and the stability bound's ingredients at `model`.

    **Arguments:** as `modopt.flow` for `model` ... `mass` and `blocks`, and

    - `per_sample_loss`: ``l(prediction, target) -> scalar`` of one sample (``L`` is the
      largest norm of its gradient in the prediction over the batch).

    **Returns:** a `Contraction`; its `stability_bound` is the bound of Theorem 3.
    """
    ntk = generalised_ntk(model, inputs, targets, loss_fn, output_metric=output_metric,
                          mass=mass, blocks=blocks)
    parts = forward_parts(model, mass, blocks)

    def one_sample_jacobian(x):
        j = jax.jacfwd(lambda p: eqx.combine(p, parts.static)(x).reshape(-1))(parts.params)
        return jnp.concatenate(parts.blocks_of(j), axis=1)

    jacobians = jax.vmap(one_sample_jacobian)(inputs)
    kappa = jnp.max(jnp.linalg.norm(jacobians, ord=2, axis=(1, 2)))
    predictions = parts.outputs(parts.params, inputs)
    gradients = jax.vmap(jax.grad(per_sample_loss))(predictions, targets)
    bound = jnp.max(jnp.linalg.norm(gradients.reshape(gradients.shape[0], -1), axis=1))
    mu = jnp.min(jnp.stack([jnp.min(m) for block in parts.masses for m in block]))
    return Contraction(ntk=ntk, xi=jnp.linalg.eigvalsh(ntk)[0], kappa=kappa,
                       loss_gradient_bound=bound, mu=mu, samples=inputs.shape[0])
