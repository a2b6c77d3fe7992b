"""Independent dense float64 references for the modopt tests.

Nothing here uses modopt's factor, Jacobian or solver code: the Jacobian comes from
``jax.jacfwd`` of the flattened batch of predictions in ALL parameters, the output
metric ``M`` is formed directly (and from ``jax.hessian`` for Gauss-Newton), and every
block system ``(J_a^T M J_a + D_a) u_a = g_a`` is solved by ``numpy.linalg.solve``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.flatten_util import ravel_pytree

import modopt
from modopt import metrics

# ----------------------------------------------------------------------------- blocks


def _leaf_count(tree) -> int:
    return len(jtu.tree_leaves(eqx.filter(tree, eqx.is_inexact_array)))


def reference_blocks(model) -> list[list[int]]:
    """Leaf indices (in ``jax.tree.leaves`` order of the parameters) of every block.

    Written from the documented rule, independently of ``modopt.block_labels``:
    Sequential/Parallel are transparent, every other modopt module (Linear, Group, ...)
    with at least one trainable array is one block.
    """
    blocks: list[list[int]] = []
    counter = [0]

    def visit(module):
        if isinstance(module, (modopt.Sequential, modopt.Parallel)):
            for child in module.modules:
                visit(child)
            return
        count = _leaf_count(module)
        if count:
            blocks.append(list(range(counter[0], counter[0] + count)))
            counter[0] += count

    visit(model)
    return blocks


def blocks_from_labels(model, labels) -> list[list[int]]:
    """Group parameter leaves by label (first appearance order)."""
    params = eqx.filter(model, eqx.is_inexact_array)
    treedef = jtu.tree_structure(params)
    label_leaves = treedef.flatten_up_to(labels)
    order: dict = {}
    for i, lab in enumerate(label_leaves):
        order.setdefault(lab, []).append(i)
    return list(order.values())


# ----------------------------------------------------------------------------- metrics


def psd_part(matrix) -> np.ndarray:
    """The positive semidefinite part of a symmetric matrix (numpy eigh clipping)."""
    m = np.asarray(matrix, np.float64)
    m = 0.5 * (m + m.T)
    values, vectors = np.linalg.eigh(m)
    return (vectors * np.clip(values, 0.0, None)) @ vectors.T


def loss_hessian(loss_fn, predictions, targets) -> np.ndarray:
    """``jax.hessian`` of the loss in the flattened (sample-major) predictions."""
    shape = predictions.shape
    y = jnp.asarray(predictions).reshape(-1)
    h = jax.jit(jax.hessian(lambda z: loss_fn(z.reshape(shape), targets)))(y)
    return np.asarray(h, np.float64)


def metric_matrix_for(metric, predictions, targets, loss_fn) -> np.ndarray:
    """The ``d x d`` output metric, computed without modopt's factor code."""
    predictions = jnp.asarray(predictions)
    d = predictions.size
    if isinstance(metric, metrics.Identity):
        return np.eye(d)
    if isinstance(metric, metrics.Diagonal):
        w = np.asarray(metric.weights, np.float64)
        if w.size == d:
            w = w.reshape(-1)
        elif w.ndim == 0:
            w = np.full(d, float(w))
        else:
            w = np.broadcast_to(w.reshape(predictions.shape[1:]), predictions.shape).reshape(-1)
        return np.diag(w)
    if isinstance(metric, metrics.Dense):
        m = metric.matrix(predictions) if callable(metric.matrix) else metric.matrix
        return np.asarray(m, np.float64)
    if isinstance(metric, metrics.GaussNewton):
        return psd_part(loss_hessian(loss_fn, predictions, targets))
    raise TypeError(f"no reference for {type(metric).__name__}")


# ----------------------------------------------------------------------------- Jacobian


def flat_model(model, inputs):
    """``(theta0, f)`` with ``f(theta)`` the flattened batch of predictions."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    theta0, unravel = ravel_pytree(params)

    def f(theta):
        m = eqx.combine(unravel(theta), static)
        return jax.vmap(m)(inputs).reshape(-1)

    return theta0, f, unravel


def leaf_slices(model) -> list[slice]:
    """Column slice of every parameter leaf within ``ravel_pytree`` order."""
    leaves = jtu.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    out, start = [], 0
    for leaf in leaves:
        out.append(slice(start, start + leaf.size))
        start += leaf.size
    return out


def block_columns(model, blocks) -> list[np.ndarray]:
    slices = leaf_slices(model)
    return [np.concatenate([np.arange(slices[i].start, slices[i].stop) for i in b]) for b in blocks]


def full_jacobian(model, inputs) -> np.ndarray:
    theta0, f, _ = flat_model(model, inputs)
    return np.asarray(jax.jit(jax.jacfwd(f))(theta0), np.float64)


def mass_diagonal(model, mass) -> np.ndarray:
    """Length-n diagonal of ``D`` from a float or a per-array pytree of masses."""
    params = eqx.filter(model, eqx.is_inexact_array)
    leaves, treedef = jtu.tree_flatten(params)
    if isinstance(mass, (int, float)):
        per_leaf = [mass] * len(leaves)
    else:
        per_leaf = treedef.flatten_up_to(mass)
    parts = [np.broadcast_to(np.asarray(m, np.float64), leaf.shape).reshape(-1)
             for m, leaf in zip(per_leaf, leaves)]
    return np.concatenate(parts)


def dense_full_metric(model, inputs, metric_matrix, mass) -> np.ndarray:
    """``J^T M J + D`` over all ``n`` parameters (n x n, float64)."""
    j = full_jacobian(model, inputs)
    return j.T @ np.asarray(metric_matrix, np.float64) @ j + np.diag(mass_diagonal(model, mass))


def dense_block_metric(model, inputs, metric_matrix, mass, blocks=None) -> np.ndarray:
    """The block-diagonal ``G`` (``J_a^T M J_a + D_a`` on every block, zero between
    blocks) over all ``n`` parameters, float64."""
    full = dense_full_metric(model, inputs, metric_matrix, mass)
    groups = reference_blocks(model) if blocks is None else blocks_from_labels(model, blocks)
    out = np.zeros_like(full)
    for cols in block_columns(model, groups):
        out[np.ix_(cols, cols)] = full[np.ix_(cols, cols)]
    return out


def dense_reference_direction(
    model, loss_fn, inputs, targets, metric_matrix, mass, blocks=None
):
    """``u_a = (J_a^T M J_a + D_a)^-1 g_a`` for every block, in numpy float64.

    `blocks`: ``None`` for the default partition (`reference_blocks`), or a labels
    pytree like ``modopt.block_labels(model)``.

    **Returns:** ``(value, direction)`` with `direction` structured like the params.
    """
    theta0, f, unravel = flat_model(model, inputs)
    shape = jax.eval_shape(jax.vmap(model), inputs).shape

    # g = J^T dl/dy with J by forward mode only, so that forward-only modules (an ODE
    # solve with diffrax.ForwardMode) have a reference too.
    y = jax.jit(f)(theta0)
    value, dl_dy = jax.value_and_grad(lambda y: loss_fn(y.reshape(shape), targets))(y)
    value = float(value)
    j = np.asarray(jax.jit(jax.jacfwd(f))(theta0), np.float64)
    g = j.T @ np.asarray(dl_dy, np.float64)
    m = np.asarray(metric_matrix, np.float64)
    dvec = mass_diagonal(model, mass)
    groups = reference_blocks(model) if blocks is None else blocks_from_labels(model, blocks)
    u = np.zeros_like(g)
    for cols in block_columns(model, groups):
        ja = j[:, cols]
        ga = ja.T @ m @ ja + np.diag(dvec[cols])
        u[cols] = np.linalg.solve(ga, g[cols])
    return value, unravel(jnp.asarray(u))


def tree_rel_error(a, b) -> float:
    """Max over leaves of ``||a - b|| / ||b||`` (leaves compared in float64)."""
    la, ta = jtu.tree_flatten(a)
    lb, tb = jtu.tree_flatten(b)
    assert ta == tb, f"tree structures differ: {ta} vs {tb}"
    worst = 0.0
    for x, y in zip(la, lb):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        assert x.shape == y.shape, (x.shape, y.shape)
        denom = np.linalg.norm(y)
        err = np.linalg.norm(x - y)
        worst = max(worst, err / denom if denom > 0 else err)
    return worst


def assert_compiles_once_under_jit_and_vmaps(objective, x, rtol) -> None:
    """`objective` inside the user's ``jit`` traces once for two values of `x` (and
    gives two different results), and its ``vmap`` agrees with the single calls."""
    traces = []

    @jax.jit
    def traced(x):
        traces.append(1)
        return objective(x)

    a, b = traced(x), traced(x + 0.01)
    assert len(traces) == 1 and a != b
    np.testing.assert_allclose(jax.vmap(objective)(jnp.stack([x, x + 0.01])), [a, b],
                               rtol=rtol)
