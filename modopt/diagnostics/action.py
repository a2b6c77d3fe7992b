"""The action and the Hamiltonian of an optimisation path (DESIGN section 5).

For a path ``w(s)`` in pseudo-time with the block-diagonal metric ``G`` and loss ``h``,

    S = integral ds ( 1/2 wdot^T G wdot + eta^2/2 g^T G^-1 g ),

and ``S >= eta |h(start) - h(end)|``, with equality exactly on the gradient flow
``wdot = -eta G^-1 g``, where the Hamiltonian ``H = 1/2 wdot^T G wdot - eta^2/2 g^T G^-1 g``
vanishes. On a computed path (the flow's saved steps, or the iterates of the discrete
steps) the *action gap* ``S - eta (h(start) - h(end)) >= 0`` and ``|H|`` measure how far it
strays from the exact flow.

The path is taken as straight in each segment between saved points, its velocity the
secant; each segment's integral uses Gauss-Legendre nodes, with ``G`` and ``g`` evaluated
at every node. Then ``S >= eta |sum of node-weighted g . dw|`` holds exactly (Cauchy-Schwarz
and AM-GM at every node), and that sum is the loss decrease up to the quadrature error of a
smooth function.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._blocks import block_diagonal
from ..gradient import riemannian_direction
from ..jacobian import AbstractJacobian, AutoJacobian
from ..linalg import AbstractBlockSolver, AutoSolve
from ..metrics import AbstractOutputMetric, DenseFactor
from ._forward import forward_parts


class PathAction(eqx.Module):
    """The action of a path and its parts (see `path_action`).

    - `action`: ``S``.
    - `gap`: ``S - eta (h(start) - h(end))`` (>= 0 up to quadrature error; 0 on the exact
      flow).
    - `kinetic`, `potential`: the integrals of ``1/2 wdot^T G wdot`` and
      ``eta^2/2 g^T G^-1 g``.
    - `losses`: ``h`` at the path's points (NaN at padding).
    - `hamiltonian`: ``H`` at the middle of every segment (0 at padding).
    - `mean_abs_hamiltonian`: ``integral |H| ds / integral ds`` along the path.
    - `segments`: the number of segments used.
    """

    action: jax.Array
    gap: jax.Array
    kinetic: jax.Array
    potential: jax.Array
    losses: jax.Array
    hamiltonian: jax.Array
    mean_abs_hamiltonian: jax.Array
    segments: jax.Array

    @property
    def max_abs_hamiltonian(self) -> jax.Array:
        return jnp.max(jnp.abs(self.hamiltonian))

    def summary(self) -> dict:
        """Plain floats, for a run's summary JSON."""
        return {"action": float(self.action), "action_gap": float(self.gap),
                "kinetic": float(self.kinetic), "potential": float(self.potential),
                "max_abs_hamiltonian": float(self.max_abs_hamiltonian),
                "mean_abs_hamiltonian": float(self.mean_abs_hamiltonian),
                "segments": int(self.segments)}


def metric_norm2(model, velocity, inputs, targets, loss_fn, *, output_metric, mass,
                 blocks=None) -> jax.Array:
    """``v^T G v`` with the block-diagonal metric ``G_a = D_a + J_a^T M J_a`` at `model`.

    `velocity` has the structure of ``eqx.filter(model, eqx.is_inexact_array)``. One JVP
    per block (``G`` is block diagonal, so blocks do not couple).
    """
    parts = forward_parts(model, mass, blocks)
    params, part, masses, dtype = parts.params, parts.part, parts.masses, parts.dtype

    def predict(p):
        return parts.outputs(p, inputs)

    factor = output_metric.factor(predict(params), targets, loss_fn)
    leaves = part.treedef.flatten_up_to(velocity)
    total = jnp.zeros((), dtype)
    for b, members in enumerate(part.members):
        only_b = [leaves[i] if i in members else jnp.zeros_like(leaves[i])
                  for i in range(len(leaves))]
        _, jv = jax.jvp(predict, (params,), (jax.tree.structure(params).unflatten(only_b),))
        if isinstance(factor, DenseFactor):
            weighted = factor.matrix @ jv.reshape(-1)
        else:
            weighted = jnp.einsum("nqp,np->nq", factor.rows, jv.reshape(jv.shape[0], -1))
        v_b = jnp.concatenate([leaves[i].reshape(-1) for i in members])
        diagonal = block_diagonal(masses[b], [part.shapes[i] for i in members])
        total = total + jnp.sum(diagonal * v_b**2) + jnp.sum(weighted**2)
    return total


def path_action(
    model,
    path,
    ts,
    loss_fn: Callable,
    inputs,
    targets,
    *,
    output_metric: AbstractOutputMetric,
    mass,
    eta: float = 1.0,
    nodes: int = 3,
    jacobian: AbstractJacobian = AutoJacobian(),
    solver: AbstractBlockSolver = AutoSolve(),
    blocks=None,
) -> PathAction:
    """The action, action gap and Hamiltonian of a path of parameters.

    ```python
    sol = modopt.flow(model, loss, x, y, output_metric=metric, mass=1e-3,
                      save_trajectory="steps")
    report = modopt.diagnostics.path_action(model, sol.trajectory, sol.trajectory_ts,
                                            loss, x, y, output_metric=metric, mass=1e-3)
    ```

    **Arguments:**

    - `model`: supplies the structure and the non-parameter parts.
    - `path`: the parameters along the path, ``eqx.filter(model, eqx.is_inexact_array)``
      with a leading axis of points (e.g. `FlowSolution.trajectory`).
    - `ts`: the pseudo-times of the points, increasing. Points at a non-finite time
      (Diffrax's padding after the last step) are left out. For the discrete steps
      ``w <- w - lr u`` take ``ts = arange(K + 1)`` and ``eta = lr`` (or ``ts = lr *
      arange(K + 1)`` and ``eta = 1``: the same action).
    - `loss_fn`, `inputs`, `targets`, `output_metric`, `mass`, `jacobian`, `solver`,
      `blocks`: as for the flow that made the path.
    - `eta`: the rate of the flow ``wdot = -eta G^-1 g``.
    - `nodes`: Gauss-Legendre nodes per segment (odd, so that one is the middle, where
      the Hamiltonian is reported).

    **Returns:** a `PathAction`.

    **Raises:** `ValueError` when `ts` and `path` disagree in length, there are fewer
    than two points, or `nodes` is not odd and positive.
    """
    if nodes < 1 or nodes % 2 == 0:
        raise ValueError(f"path_action: nodes must be odd and positive, got {nodes}.")
    ts = jnp.asarray(ts)
    lengths = {leaf.shape[0] for leaf in jax.tree.leaves(path)}
    if lengths != {ts.shape[0]}:
        raise ValueError(f"path_action: the path has {sorted(lengths)} points, ts has "
                         f"{ts.shape[0]}.")
    if not isinstance(ts, jax.core.Tracer):
        # Outside jit the padding is dropped here rather than computed and masked below
        # (a flow with max_steps=4096 that took 50 steps has 4046 padded segments).
        points = max(int(np.sum(np.isfinite(np.asarray(ts)))), 2)
        ts, path = ts[:points], jax.tree.map(lambda leaf: leaf[:points], path)
    if ts.shape[0] < 2:
        raise ValueError("path_action: a path needs at least two points.")
    static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
    dtype = ts.dtype
    taus, weights = np.polynomial.legendre.leggauss(nodes)
    taus, weights = jnp.asarray(0.5 * (taus + 1), dtype), jnp.asarray(0.5 * weights, dtype)

    def at(p):
        return eqx.combine(p, static)

    def norms(p, v):
        """``v^T G v`` and ``g^T G^-1 g`` at `p`."""
        model_p = at(p)
        d = riemannian_direction(model_p, loss_fn, inputs, targets,
                                 output_metric=output_metric, mass=mass, jacobian=jacobian,
                                 solver=solver, blocks=blocks)
        v_g_v = metric_norm2(model_p, v, inputs, targets, loss_fn,
                             output_metric=output_metric, mass=mass, blocks=blocks)
        return v_g_v, d.riemannian_norm2

    def segment(k):
        start = jax.tree.map(lambda leaf: leaf[k], path)
        end = jax.tree.map(lambda leaf: leaf[k + 1], path)
        ds = ts[k + 1] - ts[k]
        valid = jnp.isfinite(ts[k]) & jnp.isfinite(ts[k + 1]) & (ds > 0)
        ds = jnp.where(valid, ds, 1.0)
        velocity = jax.tree.map(lambda a, b: (b - a) / ds, start, end)

        def node(tau):
            p = jax.tree.map(lambda a, b: a + tau * (b - a), start, end)
            return norms(p, velocity)

        v_g_v, g_g = jax.lax.map(node, taus)
        kinetic = ds * jnp.sum(weights * 0.5 * v_g_v)
        potential = ds * jnp.sum(weights * 0.5 * eta**2 * g_g)
        middle = nodes // 2  # tau = 1/2 (odd node count)
        hamiltonian = 0.5 * v_g_v[middle] - 0.5 * eta**2 * g_g[middle]
        zero = jnp.zeros((), dtype)
        return (jnp.where(valid, kinetic, zero), jnp.where(valid, potential, zero),
                jnp.where(valid, hamiltonian, zero), valid)

    kinetic, potential, hamiltonian, valid = jax.lax.map(segment, jnp.arange(ts.shape[0] - 1))

    def loss_at(p):
        return loss_fn(jax.vmap(at(p))(inputs), targets)

    finite_point = jnp.isfinite(ts)
    safe_path = jax.tree.map(
        lambda leaf: jnp.where(finite_point.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf,
                               leaf[0]), path)
    losses = jnp.where(finite_point, jax.lax.map(loss_at, safe_path), jnp.nan)
    last = jnp.max(jnp.where(finite_point, jnp.arange(ts.shape[0]), 0))
    action = jnp.sum(kinetic) + jnp.sum(potential)
    durations = jnp.where(valid, jnp.diff(jnp.where(finite_point, ts, 0)), 0)
    return PathAction(
        action=action, gap=action - eta * (losses[0] - losses[last]),
        kinetic=jnp.sum(kinetic), potential=jnp.sum(potential), losses=losses,
        hamiltonian=hamiltonian,
        mean_abs_hamiltonian=jnp.sum(durations * jnp.abs(hamiltonian)) / jnp.sum(durations),
        segments=jnp.sum(valid),
    )
