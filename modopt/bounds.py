"""Bounds on the parameters, kept by Coleman-Li scaling of the mass."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class Box(eqx.Module):
    """Bounds ``lower <= w <= upper`` for `RiemannianSteps(box=...)`.

    With ``v`` the distance of each parameter to the bound that the descent direction
    ``-g`` heads for (``w - lower`` where ``g > 0``, ``upper - w`` where ``g < 0``, 1
    where ``g = 0`` or that bound is infinite), a block's diagonal mass ``D`` becomes
    ``(D + |g|) / v`` and a step cap is measured in the norm ``sqrt(sum u^2 / v)``: a
    parameter slows down as it nears a bound it is pushed against and stays on it once
    there. This is the scaling of trust-region reflective methods (Coleman and Li 1996;
    scipy's ``trf``, fides) written as a parameter metric. Updates are clipped to the box.

    **Arguments:** `lower`, `upper`: pytrees with the structure of
    ``eqx.filter(model, eqx.is_inexact_array)``, a scalar or an array of the parameter's
    shape per parameter array (``-inf``/``inf`` for no bound). `smallest`: the least
    distance used, relative to the width of the box (1 where it is infinite), so that a
    parameter on its bound has a large but finite mass.

    **Raises:** `ValueError` if a lower bound is above its upper bound (checked when the
    bounds are concrete values, not inside a trace).
    """

    lower: object
    upper: object
    smallest: float = 1e-12

    def __check_init__(self):
        pairs = zip(jax.tree.leaves(self.lower), jax.tree.leaves(self.upper))
        for i, (lower, upper) in enumerate(pairs):
            try:
                above = np.any(np.asarray(lower) > np.asarray(upper))
            except (TypeError, jax.errors.TracerArrayConversionError):
                continue  # traced: cannot be checked here
            if above:
                raise ValueError(f"Box: a lower bound is above its upper bound in leaf {i}: "
                                 f"lower={lower}, upper={upper}")

    def distance(self, params, gradient):
        """``v`` for every parameter (a pytree like `params`)."""

        def one(w, g, lower, upper):
            width = jnp.where(jnp.isfinite(upper - lower), upper - lower, 1.0)
            down = jnp.where(jnp.isfinite(lower), w - lower, 1.0)
            up = jnp.where(jnp.isfinite(upper), upper - w, 1.0)
            v = jnp.where(g > 0, down, jnp.where(g < 0, up, 1.0))
            return jnp.maximum(v, self.smallest * width).astype(w.dtype)

        return jax.tree.map(one, params, gradient, *self._bounds(params))

    def clip(self, params):
        """`params` clipped to the box."""
        return jax.tree.map(lambda w, lower, upper: jnp.clip(w, lower, upper).astype(w.dtype),
                            params, *self._bounds(params))

    def _bounds(self, params):
        structure = jax.tree.structure(params)
        try:
            return tuple(structure.unflatten(structure.flatten_up_to(bound))
                         for bound in (self.lower, self.upper))
        except (ValueError, TypeError) as error:
            raise ValueError("Box: lower and upper must have the structure of "
                             f"eqx.filter(model, eqx.is_inexact_array): {error}") from None
