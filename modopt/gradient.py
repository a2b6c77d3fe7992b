"""The Riemannian gradient: loss, ``g``, ``K`` -> ``u = (D + K^T K)^-1 g`` per block."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._blocks import block_diagonal, partition, resolve_mass
from ._module import forced_sensitivities, has_auto_systems
from .jacobian import (
    AbstractJacobian,
    AutoJacobian,
    compute_pullback,
    forward_jacobian,
    linear_paths,
    pullback_mode,
)
from .linalg import (
    AbstractBlockSolver,
    AutoSolve,
    gram_woodbury_solve,
    primal_solve,
    woodbury_solve,
)
from .metrics import AbstractOutputMetric


class Direction(eqx.Module):
    """Everything one evaluation of the Riemannian gradient produces.

    - `value`: the loss.
    - `gradient`: the ordinary gradient ``g`` (structure of the parameters).
    - `direction`: ``u`` with ``u_a = G_a^-1 g_a`` for every block ``a``.
    - `predictions`: the model's batched outputs.
    """

    value: jax.Array
    gradient: object
    direction: object
    predictions: jax.Array

    @property
    def riemannian_norm2(self) -> jax.Array:
        """``g^T u``, the squared Riemannian gradient norm (>= 0)."""
        dots = jax.tree.map(lambda g, u: jnp.sum(g * u), self.gradient, self.direction)
        return sum(jax.tree.leaves(dots))

    @property
    def is_finite(self) -> jax.Array:
        leaves = jax.tree.leaves((self.value, self.direction))
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _structured_blocks(model, part, masses) -> dict:
    """Blocks that are exactly one reachable `Linear` with isotropic masses."""
    index_tree = part.treedef.unflatten(list(range(len(part.shapes))))
    block_of = {tuple(sorted(m)): b for b, m in enumerate(part.members)}
    out = {}
    for path, linear in linear_paths(model):
        node = index_tree
        for i in path:
            node = node.modules[i]
        indices = tuple(sorted(i for i in (node.weight, node.bias) if i is not None))
        b = block_of.get(indices)
        if b is not None and all(m.ndim == 0 for m in masses[b]):
            out[b] = (path, linear)
    return out


def _per_sample_linear_matrix(delta, x, has_bias):
    k_w = jnp.einsum("nko,ni->nkoi", delta, x).reshape(delta.shape[0] * delta.shape[1], -1)
    if not has_bias:
        return k_w
    return jnp.concatenate([k_w, delta.reshape(k_w.shape[0], -1)], axis=-1)


def _gradient_by_forward_mode(model, jacobian, leaves, inputs) -> bool:
    if "forward" in forced_sensitivities(model):
        return True
    if not has_auto_systems(model):
        return False
    out = jax.eval_shape(jax.vmap(model), inputs)
    rows = sum(int(np.prod(o.shape[1:])) for o in jax.tree.leaves(out))
    num_params = sum(int(np.prod(leaf.shape)) for leaf in leaves)
    return pullback_mode(model, jacobian, num_params, rows) == "forward"


def riemannian_direction(
    model,
    loss_fn: Callable,
    inputs,
    targets,
    *,
    output_metric: AbstractOutputMetric,
    mass,
    jacobian: AbstractJacobian = AutoJacobian(),
    solver: AbstractBlockSolver = AutoSolve(),
    blocks=None,
    mass_scale=1.0,
    box=None,
) -> Direction:
    """As `riemannian_gradient`, returning the full `Direction`.

    `mass_scale` multiplies every block's resolved mass, module-declared ones included
    (the adaptive damping of `RiemannianSteps`). `box`: a `modopt.Box`, whose scaling
    turns the scaled mass ``D`` into ``(D + |g|) / v`` (see `Box`).
    """
    value, gradient, predictions, solve, _ = linearise(
        model, loss_fn, inputs, targets, output_metric=output_metric, mass=mass,
        jacobian=jacobian, solver=solver, blocks=blocks, box=box)
    return Direction(value=value, gradient=gradient, direction=solve(mass_scale),
                     predictions=predictions)


def linearise(
    model,
    loss_fn: Callable,
    inputs,
    targets,
    *,
    output_metric: AbstractOutputMetric,
    mass,
    jacobian: AbstractJacobian = AutoJacobian(),
    solver: AbstractBlockSolver = AutoSolve(),
    blocks=None,
    box=None,
):
    """The one pass of `riemannian_direction` through the model, and its solve.

    **Returns:** ``(value, gradient, predictions, solve, product)``:
    ``solve(mass_scale, rhs=None, scale_box=False)`` is ``u = G^-1 rhs`` (``rhs`` a tree
    like the parameters, by default the gradient, so ``u`` is the direction) with the
    mass multiplied by `mass_scale`, from the same Jacobian (so that a rejected step can
    be retried with more mass without another pass); with a `box`, `mass_scale`
    multiplies only the mass given, or with `scale_box` the whole scaled mass
    ``(D + |g|) / v``. ``product(v, mass_scale=1.0, scale_box=False)`` is ``G v``.
    """
    if not isinstance(output_metric, AbstractOutputMetric):
        raise TypeError(
            "output_metric must be a modopt.metrics metric (Identity(), Diagonal(w), "
            f"Dense(M), GaussNewton()), got {type(output_metric).__name__}."
        )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("The model has no trainable (inexact array) parameters.")
    dtype = leaves[0].dtype

    def loss_of(p):
        predictions = jax.vmap(eqx.combine(p, static))(inputs)
        return loss_fn(predictions, targets), predictions

    value_shape = jax.eval_shape(loss_of, params)[0].shape
    if value_shape != ():
        raise ValueError(f"loss_fn must return a scalar, got shape {value_shape}.")
    part = partition(model, blocks)
    forward_jac = None
    if _gradient_by_forward_mode(model, jacobian, leaves, inputs):
        # Dynamical-system modules in forward mode (forced, or chosen because the
        # parameters are few): n JVPs give the Jacobian, the gradient is J^T dloss/dy and
        # the pullback below reuses J; no reverse pass through the solver is needed (it
        # may not exist, or may be NaN where forward mode is not).
        predictions, forward_jac = forward_jacobian(params, static, inputs, part,
                                                    jacobian.chunk_size)
        value, loss_grad = jax.value_and_grad(loss_fn)(predictions, targets)
        flat_loss_grad = jax.vmap(lambda y: ravel_pytree(y)[0])(loss_grad)  # (batch, p)
        theta_grad = jnp.einsum("nbp,bp->n", forward_jac, flat_loss_grad)
        gradient = part.unravel_concatenated(theta_grad)
    else:
        (value, predictions), gradient = jax.value_and_grad(loss_of, has_aux=True)(params)
    factor = output_metric.factor(predictions, targets, loss_fn)
    base_masses = resolve_mass(model, mass, part, dtype)
    # The box makes every mass a full array, which the structured (Gram) path does not take.
    structured = {} if box is not None else _structured_blocks(model, part, base_masses)
    pull = compute_pullback(model, inputs, factor, part, structured, jacobian,
                            forward_jac=forward_jac)
    grads = part.split(gradient)
    flat_grads = part.ravel(gradient)
    distances = None if box is None else part.split(box.distance(params, gradient))

    def masses_for(mass_scale, scale_box):
        if box is None:
            return [[m * mass_scale for m in block] for block in base_masses]
        box_scale = mass_scale if scale_box else 1.0
        return [[(m * mass_scale + jnp.abs(g) * box_scale) / v for m, g, v in zip(*block)]
                for block in zip(base_masses, grads, distances)]

    def dense_rows(b):
        if pull.delta[b] is None:
            return pull.dense[b]
        return _per_sample_linear_matrix(pull.delta[b], pull.inputs[b],
                                         structured[b][1].bias is not None)

    def solve(mass_scale, rhs=None, scale_box=False):
        masses = masses_for(mass_scale, scale_box)
        rhs_split, rhs_flat = ((grads, flat_grads) if rhs is None
                               else (part.split(rhs), part.ravel(rhs)))
        directions = []
        for b, members in enumerate(part.members):
            shapes = [part.shapes[i] for i in members]
            if pull.delta[b] is not None:
                delta, x = pull.delta[b], pull.inputs[b]
                has_bias = structured[b][1].bias is not None
                rows = delta.shape[0] * delta.shape[1]
                if solver.use_dual(rows, part.sizes[b]):
                    u_w, u_b = gram_woodbury_solve(
                        delta, x, rhs_split[b][0], rhs_split[b][1] if has_bias else None,
                        masses[b][0], masses[b][-1],
                    )
                    directions.append(
                        jnp.concatenate([u_w.reshape(-1)] + ([u_b] if has_bias else [])))
                    continue
            k = dense_rows(b)
            dinv = 1 / block_diagonal(masses[b], shapes)
            use_dual = solver.use_dual(k.shape[0], part.sizes[b])
            directions.append((woodbury_solve if use_dual else primal_solve)(
                k, rhs_flat[b], dinv))
        return part.unravel(directions)

    def product(v, mass_scale=1.0, scale_box=False):
        masses = masses_for(mass_scale, scale_box)
        out = []
        for b, (members, v_b) in enumerate(zip(part.members, part.ravel(v))):
            k = dense_rows(b)
            diagonal = block_diagonal(masses[b], [part.shapes[i] for i in members])
            out.append(k.T @ (k @ v_b) + diagonal * v_b)
        return part.unravel(out)

    return value, gradient, predictions, solve, product


def riemannian_gradient(
    model,
    loss_fn: Callable,
    inputs,
    targets,
    *,
    output_metric: AbstractOutputMetric,
    mass,
    jacobian: AbstractJacobian = AutoJacobian(),
    solver: AbstractBlockSolver = AutoSolve(),
    blocks=None,
):
    """The loss and the layerwise Riemannian gradient of `model`.

    For every block ``a``: ``u_a = (D_a + K_a^T K_a)^-1 g_a`` with ``K_a = L J_a``,
    ``J_a`` the Jacobian of the flattened batch of predictions in the block's
    parameters, ``L^T L`` the output metric and ``D_a`` the block's diagonal mass.

    **Arguments:**

    - `model`: maps **one** input to one output; vmapped over the leading axis of
      `inputs`. Its inexact arrays are the parameters.
    - `loss_fn`: ``loss_fn(predictions, targets) -> scalar``.
    - `inputs`, `targets`: the batch.
    - `output_metric`: a `modopt.metrics` metric on the flattened predictions.
    - `mass`: a positive float, or a pytree like the parameters with a scalar or a
      full-shape positive array per parameter array. A module's own ``mass`` overrides
      a float.
    - `jacobian`: `AutoJacobian()` (default), `Reverse()` or `Forward()`.
    - `solver`: `AutoSolve()` (default), `Woodbury()` or `Primal()`.
    - `blocks`: optional block labels (see `modopt.block_labels`) to regroup blocks.

    **Returns:** ``(value, direction)``, `direction` with the structure of
    ``eqx.filter(model, eqx.is_inexact_array)``.

    **Raises:** `ValueError`/`TypeError` for inputs that cannot work (wrong metric type,
    a loss that is not scalar, a mass that is not positive, blocks of the wrong
    structure). A metric that is not positive semidefinite raises at run time.
    """
    result = riemannian_direction(
        model, loss_fn, inputs, targets, output_metric=output_metric, mass=mass,
        jacobian=jacobian, solver=solver, blocks=blocks,
    )
    return result.value, result.direction
