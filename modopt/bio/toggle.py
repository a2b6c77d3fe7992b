"""The Gardner, Cantor and Collins (2000) genetic toggle switch as an ODE module."""

from __future__ import annotations

import jax.numpy as jnp

from ..systems import ODEModule

TOGGLE_NOMINAL = {
    "a1": 156.25,
    "a2": 15.6,
    "beta": 2.5,
    "gamma": 1.0,
    "eta": 2.0015,
    "K": 2.9618e-5,
}
"""Gardner et al. (2000), Fig. 5 parameters (K in molar IPTG)."""


def _toggle_field(t, state, condition, params):
    rates = {name: jnp.exp(value) for name, value in params.items()}
    u, v = state[0], state[1]
    iptg = condition[0]
    repressor = u / (1 + iptg / rates["K"]) ** rates["eta"]
    du = rates["a1"] / (1 + v ** rates["beta"]) - u
    dv = rates["a2"] / (1 + repressor ** rates["gamma"]) - v
    return jnp.stack([du, dv])


def _initial_state(condition, params):
    return condition[1:3]


def toggle_switch(times, params: dict | None = None, *, dtype=float, **ode_options) -> ODEModule:
    """The toggle switch ``du/dt = a1/(1 + v^beta) - u``,
    ``dv/dt = a2/(1 + (u/(1 + IPTG/K)^eta)^gamma) - v``.

    The module's input is one condition ``[IPTG (M), u(0), v(0)]``; its output the
    states ``(u, v)`` at `times`, shape ``(T, 2)``. Parameters are trained in log scale
    (``params["a1"]`` holds ``log a1``), which keeps them positive and equalises K's
    scale (1e-5) with the others'.

    **Arguments:**

    - `times`: observation times.
    - `params`: rates in linear scale (default `TOGGLE_NOMINAL`).
    - `dtype`: the parameters' dtype.
    - `ode_options`: passed to `modopt.systems.ODEModule` (solver, rtol, atol, ...).

    **Raises:** `ValueError` for unknown or non-positive parameters.
    """
    params = dict(TOGGLE_NOMINAL if params is None else params)
    unknown = set(params) ^ set(TOGGLE_NOMINAL)
    if unknown:
        raise ValueError(
            f"toggle_switch needs exactly the parameters {sorted(TOGGLE_NOMINAL)}; "
            f"got {sorted(params)}."
        )
    if any(not value > 0 for value in params.values()):
        raise ValueError(f"toggle_switch parameters must be positive, got {params}.")
    log_params = {name: jnp.log(jnp.asarray(value, dtype)) for name, value in params.items()}
    return ODEModule(
        _toggle_field, log_params, _initial_state, times, in_shape=(3,), **ode_options
    )
