"""The block partition of a model's parameters (DESIGN section 1) and per-block mass."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._module import AbstractModule, Parallel, Sequential

_COMPOSITES = (Sequential, Parallel)


def _is_block_module(node) -> bool:
    return isinstance(node, AbstractModule) and not isinstance(node, _COMPOSITES)


def _label(model):
    """Block labels (see `block_labels`) and the mass each block's module declares."""
    params = eqx.filter(model, eqx.is_inexact_array)
    declared: dict[int, float | None] = {}

    def label(node):
        block = len(declared)
        if _is_block_module(node):
            if not jtu.tree_leaves(node):
                return node
            declared[block] = node.mass
            return jtu.tree_map(lambda _: block, node)
        declared[block] = None
        return block

    return jtu.tree_map(label, params, is_leaf=_is_block_module), declared


def block_labels(model) -> Any:
    """The block of every trainable array of `model`, as a pytree of ints.

    The result has the structure of ``eqx.filter(model, eqx.is_inexact_array)`` with an
    integer block label in place of each array. A leaf modopt module is one block, a
    `Group` is one block, and in a model that is not a modopt module (say an
    ``eqx.nn.MLP``) every array is a block of its own. Pass a relabelled copy as
    ``blocks=`` to regroup.
    """
    return _label(model)[0]


class BlockPartition(eqx.Module):
    """Which flattened parameter leaves belong to which block (static structure)."""

    treedef: Any = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    members: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    declared_mass: tuple[float | None, ...] = eqx.field(static=True)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(sum(math.prod(self.shapes[i]) for i in m) for m in self.members)

    def split(self, tree) -> list[list]:
        """Leaves of `tree` (structure of the params) grouped by block."""
        leaves = self.treedef.flatten_up_to(tree)
        return [[leaves[i] for i in m] for m in self.members]

    def ravel(self, tree, lead: int = 0) -> list[jax.Array]:
        """One flat vector per block; `lead` leading batch axes are kept."""
        out = []
        for group in self.split(tree):
            out.append(
                jnp.concatenate(
                    [jnp.reshape(x, x.shape[:lead] + (-1,)) for x in group], axis=-1
                )
            )
        return out

    def block_starts(self) -> list[int]:
        """Where blocks 2, 3, ... begin in the concatenation of `ravel`'s vectors."""
        return [int(s) for s in np.cumsum(self.sizes)[:-1]]

    def unravel_concatenated(self, theta) -> Any:
        """Inverse of ``jnp.concatenate(ravel(tree))``."""
        return self.unravel(jnp.split(theta, self.block_starts()))

    def unravel(self, vectors) -> Any:
        """Inverse of `ravel` (no leading axes)."""
        leaves = [None] * len(self.shapes)
        for vector, members in zip(vectors, self.members):
            start = 0
            for i in members:
                size = math.prod(self.shapes[i])
                leaves[i] = jnp.reshape(vector[start : start + size], self.shapes[i])
                start += size
        return self.treedef.unflatten(leaves)


def partition(model, blocks=None) -> BlockPartition:
    """The `BlockPartition` of `model`, from `block_labels` or the user's `blocks`.

    **Raises:** `ValueError` when `blocks` does not match the model's parameters.
    """
    params = eqx.filter(model, eqx.is_inexact_array)
    leaves, treedef = jtu.tree_flatten(params)
    default_labels, declared = _label(model)
    labels = default_labels if blocks is None else blocks
    try:
        label_leaves = treedef.flatten_up_to(labels)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "blocks must have the structure of eqx.filter(model, eqx.is_inexact_array) "
            f"with one label per array: {error}"
        ) from None
    order: dict[Any, list[int]] = {}
    for i, lab in enumerate(label_leaves):
        order.setdefault(lab, []).append(i)
    return BlockPartition(
        treedef=treedef,
        shapes=tuple(tuple(x.shape) for x in leaves),
        members=tuple(tuple(m) for m in order.values()),
        declared_mass=tuple(
            declared.get(lab) if blocks is None else None for lab in order
        ),
    )


def resolve_mass(model, mass, part: BlockPartition, dtype) -> list[list[jax.Array]]:
    """The diagonal mass of every array, grouped by block.

    Each entry is a 0-d array (isotropic in that array) or an array of the parameter's
    shape. Precedence: a per-array pytree `mass` > a module's own ``mass`` > a float.

    **Raises:** `ValueError` for a mass that is not positive or of the wrong structure.
    """
    if _is_scalar(mass):
        _check_positive(mass, "mass")
        return [
            [jnp.asarray(mass if own is None else own, dtype)] * len(members)
            for own, members in zip(part.declared_mass, part.members)
        ]
    else:
        try:
            per_leaf = part.treedef.flatten_up_to(mass)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "mass must be a positive float or a pytree with the structure of "
                f"eqx.filter(model, eqx.is_inexact_array): {error}"
            ) from None
        for m in per_leaf:
            _check_positive(m, "every entry of a per-array mass")
        per_leaf = [jnp.asarray(m, dtype) for m in per_leaf]
        for m, shape in zip(per_leaf, part.shapes):
            if m.shape not in ((), shape):
                raise ValueError(
                    f"a per-array mass must be a scalar or of shape {shape}, got {m.shape}."
                )
    return [[per_leaf[i] for i in members] for members in part.members]


def _check_positive(mass, what: str) -> None:
    """Raise for a concrete mass that is not positive (a traced one cannot be checked)."""
    try:
        values = np.asarray(mass, dtype=np.float64)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(f"{what} must be positive and finite, got {mass}.")


def _is_scalar(x) -> bool:
    return isinstance(x, (int, float)) or (hasattr(x, "shape") and x.shape == ())


def block_diagonal(masses_of_block, shapes) -> jax.Array:
    """The flat diagonal of one block's mass."""
    return jnp.concatenate(
        [jnp.broadcast_to(m, s).reshape(-1) for m, s in zip(masses_of_block, shapes)]
    )
