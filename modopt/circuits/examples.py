"""Small circuits written directly as dynamical-system modules."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..systems import IndexOneDAE

TANH_NODE_NOMINAL = {"R": 1.0, "g": 2.0, "V0": 0.5, "C": 0.3, "RL": 2.0}
"""Ohm, siemens, volt, farad, ohm."""


def _currents(t, x, z, u, params):
    p = {name: jnp.exp(value) for name, value in params.items()}
    through = p["g"] * jnp.tanh((z - x) / p["V0"])
    source = (u[0] * jnp.sin(2.0 * t) - z) / p["R"]
    return p, through, source


def _capacitor(t, x, z, u, params):
    p, through, _ = _currents(t, x, z, u, params)
    return (through - x / p["RL"]) / p["C"]


def _node(t, x, z, u, params):
    _, through, source = _currents(t, x, z, u, params)
    return source - through


def _observed(t, x, z, u, params):
    _, _, source = _currents(t, x, z, u, params)
    return jnp.concatenate([x, z, source])


def tanh_node_circuit(times, params: dict | None = None, **dae_options) -> IndexOneDAE:
    """A source ``E(t) = u sin(2t)`` drives, through a resistor ``R``, a node of voltage
    ``z`` joined to a capacitor ``C`` (voltage ``x``, leaking through ``RL``) by a
    saturating conductance ``i = g tanh((z - x) / V0)``.

    Semi-explicit index-1 DAE: ``C x' = g tanh((z - x)/V0) - x/RL`` and Kirchhoff's current
    law at the node, ``0 = (E - z)/R - g tanh((z - x)/V0)``, which is algebraic in ``z``.
    Input: ``[u]`` (the source amplitude, V); output ``(x, z, i)`` at `times`, shape
    ``(T, 3)``, with ``i`` the source current. (Without a current, scaling R, RL down and
    g, C up by one factor leaves both voltages unchanged: the parameters would not be
    identifiable.) Parameters are trained in log scale.

    **Raises:** `ValueError` for unknown or non-positive parameters.
    """
    params = dict(TANH_NODE_NOMINAL if params is None else params)
    if set(params) != set(TANH_NODE_NOMINAL) or any(not v > 0 for v in params.values()):
        raise ValueError(
            f"tanh_node_circuit needs positive {sorted(TANH_NODE_NOMINAL)}, got {params}."
        )
    log_params = {name: jnp.log(jnp.asarray(value, float)) for name, value in params.items()}
    return IndexOneDAE(
        _capacitor, _node, log_params, np.array([0.0]), np.array([0.0]), times,
        observable=_observed, in_shape=(1,), **dae_options,
    )
