"""``K_a = L J_a`` for every block at once (DESIGN section 2).

Three ways, chosen per call by a strategy object:

- `Reverse`: vector-Jacobian products vmapped over the rows of ``L``. With a
  `SampleFactor` the products are taken one sample at a time (``q`` rows per sample),
  which costs ``batch * q`` single-sample backward passes rather than ``r`` full-batch
  ones. With ``structured=True`` every `Linear` block skips ``K`` altogether: only the
  cotangents at its output and its inputs are kept (see `linalg.gram_woodbury_solve`).
- `Forward`: Jacobian-vector products over all ``n`` parameters, then ``K = L J``.
- `AutoJacobian` (default): forward when ``n`` is smaller than the rows of ``L`` per
  pass, reverse (structured) otherwise.

`chunk_size` bounds memory: the products run in chunks of that many (``jax.lax.map``).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._module import Linear, Parallel, Sequential, forced_sensitivities, resolve_sensitivity
from .metrics import SampleFactor


class AbstractJacobian(eqx.Module):
    """A strategy for computing ``K``: `Reverse`, `Forward` or `AutoJacobian`."""

    chunk_size: eqx.AbstractVar[int | None]

    @abc.abstractmethod
    def mode(self, num_params: int, rows_per_pass: int) -> str:
        """``"forward"``, ``"reverse"`` or ``"structured"``."""


class Reverse(AbstractJacobian):
    """Reverse mode; `structured` uses the Gram path for `Linear` blocks."""

    structured: bool = eqx.field(static=True, default=True)
    chunk_size: int | None = eqx.field(static=True, default=None)

    def mode(self, num_params, rows_per_pass):
        return "structured" if self.structured else "reverse"


class Forward(AbstractJacobian):
    """Forward mode: one JVP per parameter (good when parameters are few)."""

    chunk_size: int | None = eqx.field(static=True, default=None)

    def mode(self, num_params, rows_per_pass):
        return "forward"


class AutoJacobian(AbstractJacobian):
    """Forward when there are fewer parameters than rows of ``L`` per pass."""

    chunk_size: int | None = eqx.field(static=True, default=None)

    def mode(self, num_params, rows_per_pass):
        return "forward" if num_params < rows_per_pass else "structured"


def _map(fn, xs, chunk_size):
    if chunk_size is None:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=chunk_size)


def linear_paths(module, path=()):
    """``(path, Linear)`` for every `Linear` reachable through Sequential/Parallel."""
    if isinstance(module, (Sequential, Parallel)):
        for i, child in enumerate(module.modules):
            yield from linear_paths(child, path + (i,))
    elif isinstance(module, Linear):
        yield path, module


def tapped_call(model, x, eps: dict):
    """``model(x)`` with ``eps[path]`` added to the output of the `Linear` at ``path``.

    **Returns:** the output and ``{path: that Linear's input}``.
    """
    records = {}

    def call(path, module, x):
        if isinstance(module, (Sequential, Parallel)):
            return module.apply_children(x, lambda i, m, xi: call(path + (i,), m, xi))
        if path in eps:
            records[path] = x
            return module(x) + eps[path]
        return module(x)

    return call((), model, x), records


def _flat(y):
    return ravel_pytree(y)[0]


class Pullback(eqx.Module):
    """What the Jacobian pass produced for each block.

    `dense[b]` is ``K_b`` of shape ``(r, n_b)`` for generic blocks (else ``None``);
    `delta[b]`, `inputs[b]` are the output cotangents ``(batch, q, out)`` and inputs
    ``(batch, in)`` of a structured `Linear` block (else ``None``).
    """

    dense: list
    delta: list
    inputs: list


def compute_pullback(
    model, inputs, factor, part, structured: dict, jacobian: AbstractJacobian,
    forward_jac=None,
) -> Pullback:
    """`Pullback` for every block; `structured` maps a block to ``(path, Linear)``.
    `forward_jac`: the Jacobian of `forward_jacobian`, if already computed; used when
    the mode is forward instead of a second pass."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    num_params = sum(part.sizes)
    if isinstance(factor, SampleFactor):
        rows_per_pass = factor.rows.shape[1]
    else:
        rows_per_pass = factor.matrix.shape[0]
    mode = pullback_mode(model, jacobian, num_params, rows_per_pass)
    if mode == "forward":
        if forward_jac is None:
            _, forward_jac = forward_jacobian(params, static, inputs, part, jacobian.chunk_size)
        return _pullback_of_jacobian(forward_jac, factor, part)
    taps = structured if mode == "structured" else {}
    return _reverse(params, static, inputs, factor, part, taps, jacobian.chunk_size)


def pullback_mode(model, jacobian: AbstractJacobian, num_params: int, rows_per_pass: int) -> str:
    """The strategy's mode, reconciled with modes that modules force.

    **Raises:** `ValueError` when modules force both modes, or when the user's strategy
    contradicts a module's forced mode.
    """
    forced = forced_sensitivities(model)
    if len(forced) > 1:
        raise ValueError(
            "Some modules force sensitivity='forward' and others 'reverse'; one Jacobian "
            "pass cannot do both. Set them to 'auto' (or all to the same mode)."
        )
    mode = jacobian.mode(num_params, rows_per_pass)
    if not forced:
        return mode
    (want,) = forced
    if isinstance(jacobian, AutoJacobian):
        return "forward" if want == "forward" else "structured"
    if (want == "forward") != (mode == "forward"):
        raise ValueError(
            f"jacobian={type(jacobian).__name__}() contradicts a module's "
            f"sensitivity={want!r}; use AutoJacobian() or set the module to 'auto'."
        )
    return mode


def forward_jacobian(params, static, inputs, part, chunk_size):
    """The model's batched outputs and their Jacobian in all parameters, by one JVP per
    parameter (modules in forward sensitivity mode).

    **Returns:** ``(predictions, jac)``: `predictions` as ``jax.vmap(model)(inputs)``,
    `jac` of shape ``(n, batch, p)`` (``p`` the flattened output of one sample, the
    parameters in the order of ``part.ravel``).
    """
    theta = jnp.concatenate(part.ravel(params))

    def batch_output(theta):
        p = part.unravel_concatenated(theta)
        return jax.vmap(resolve_sensitivity(eqx.combine(p, static), "forward"))(inputs)

    def column(j):
        tangent = jax.nn.one_hot(j, theta.size, dtype=theta.dtype)
        outputs, tangents = jax.jvp(batch_output, (theta,), (tangent,))
        return outputs, jax.vmap(_flat)(tangents)

    # The outputs do not depend on the tangent: under vmap they are computed once.
    outputs, jac = _map(column, jnp.arange(theta.size), chunk_size)  # jac: (n, batch, p)
    return jax.tree.map(lambda leaf: leaf[0], outputs), jac


def _pullback_of_jacobian(jac, factor, part):
    n = jac.shape[0]
    if isinstance(factor, SampleFactor):
        k = jnp.einsum("bqp,nbp->bqn", factor.rows, jac).reshape(-1, n)
    else:
        k = factor.matrix @ jac.reshape(n, -1).T
    dense = jnp.split(k, part.block_starts(), axis=1)
    none = [None] * len(dense)
    return Pullback(dense=dense, delta=none, inputs=list(none))


def linear_block_matrix(delta, x, has_bias: bool):
    """``K`` of a `Linear` block from output cotangents and inputs.

    `delta` is ``(..., batch, out)`` with `x` ``(batch, in)`` (each row spans the batch),
    or ``(batch, q, out)`` with per-sample rows; the latter is passed as
    ``delta[:, :, None, :]`` against ``x[:, None, :]`` by the caller.
    """
    k_w = jnp.einsum("...bo,bi->...oi", delta, x)
    k_w = k_w.reshape(k_w.shape[:-2] + (-1,))
    if not has_bias:
        return k_w
    return jnp.concatenate([k_w, delta.sum(-2)], axis=-1)


def _reverse(params, static, inputs, factor, part, taps, chunk_size):
    # Structured blocks are not differentiated; only the cotangents at their outputs.
    leaves = jax.tree.leaves(params)
    differentiated = [True] * len(leaves)
    for b in taps:
        for i in part.members[b]:
            differentiated[i] = False
    p_diff, p_fixed = eqx.partition(params, part.treedef.unflatten(differentiated))
    dtype = leaves[0].dtype
    eps0 = {path: jnp.zeros(lin.weight.shape[0], dtype) for path, lin in taps.values()}

    def single(p_diff, eps, x):
        model = eqx.combine(p_diff, p_fixed, static)
        y, records = tapped_call(model, x, eps)
        return _flat(y), records

    if isinstance(factor, SampleFactor):

        def per_sample(args):
            x, rows = args
            _, vjp, records = jax.vjp(lambda p, e: single(p, e, x), p_diff, eps0, has_aux=True)
            cot_p, cot_eps = jax.vmap(vjp)(rows)
            return cot_p, cot_eps, records

        # cot_p leaves: (batch, q, *shape); cot_eps[path]: (batch, q, out)
        cot_p, cot_eps, records = _map(per_sample, (inputs, factor.rows), chunk_size)
        lead = 2
    else:
        batch = jax.tree.leaves(inputs)[0].shape[0]
        eps_batch = {k: jnp.zeros((batch,) + v.shape, dtype) for k, v in eps0.items()}

        def full(p, e):
            ys, records = jax.vmap(lambda x, ex: single(p, ex, x))(inputs, e)
            return ys.reshape(-1), records

        _, vjp, records = jax.vjp(full, p_diff, eps_batch, has_aux=True)
        # cot_p leaves: (r, *shape); cot_eps[path]: (r, batch, out)
        cot_p, cot_eps = _map(vjp, factor.matrix, chunk_size)
        lead = 1

    cot_leaves = iter(jax.tree.leaves(cot_p))
    by_leaf = [next(cot_leaves) if d else None for d in differentiated]
    dense, delta, ins = [], [], []
    for b, members in enumerate(part.members):
        if b in taps:
            path, linear = taps[b]
            if lead == 1:  # rows span the batch: materialise K (cheap, no extra pass)
                k = linear_block_matrix(cot_eps[path], records[path], linear.bias is not None)
                dense.append(k)
                delta.append(None)
                ins.append(None)
            else:
                dense.append(None)
                delta.append(cot_eps[path])
                ins.append(records[path])
            continue
        group = [by_leaf[i] for i in members]
        rows = group[0].shape[:lead]
        k = jnp.concatenate([g.reshape(rows + (-1,)) for g in group], axis=-1)
        dense.append(k.reshape(-1, part.sizes[b]))
        delta.append(None)
        ins.append(None)
    return Pullback(dense=dense, delta=delta, inputs=ins)
