"""The pieces every diagnostic needs: the model split for forward-mode derivatives, its
block partition and masses."""

from __future__ import annotations

import equinox as eqx
import jax

from .._blocks import BlockPartition, partition, resolve_mass
from .._module import resolve_sensitivity


class ForwardParts(eqx.Module):
    """`params` and `static` of the model with ``"auto"`` systems set to forward mode
    (their structure differs from the user's model only in static fields), the block
    `part`ition, the resolved `masses` and the `dtype`."""

    params: object
    static: object
    part: BlockPartition
    masses: list
    dtype: object = eqx.field(static=True)

    def outputs(self, params, inputs):
        """The batch of outputs at `params` (vmapped over the leading axis of `inputs`)."""
        return jax.vmap(eqx.combine(params, self.static))(inputs)

    def blocks_of(self, tree) -> list:
        """One flat ``(rows, n_a)`` matrix per block of a tree with the resolved
        structure and one leading axis (e.g. a Jacobian)."""
        return self.part.ravel(self.part.treedef.unflatten(jax.tree.leaves(tree)), lead=1)


def forward_parts(model, mass, blocks=None) -> ForwardParts:
    params, static = eqx.partition(resolve_sensitivity(model, "forward"), eqx.is_inexact_array)
    dtype = jax.tree.leaves(params)[0].dtype
    part = partition(model, blocks)
    return ForwardParts(params, static, part, resolve_mass(model, mass, part, dtype), dtype)
