"""Nonlinear device models, written to match ngspice's equations."""

from __future__ import annotations

import jax.numpy as jnp

# ngspice's thermal voltage at 300.15 K (27 C) with its CODATA 2014 constants.
BOLTZMANN = 1.38064852e-23
CHARGE = 1.6021766208e-19
THERMAL_VOLTAGE = BOLTZMANN * 300.15 / CHARGE
GMIN = 1e-12
"""The conductance ngspice puts across every diode junction."""


def diode_current(vd, model: dict):
    """Level-1 diode junction current (ngspice ``dioload.c``, no breakdown), plus GMIN.

    Forward and mildly reverse (``vd >= -3 N Vt``): ``IS (exp(vd / (N Vt)) - 1)``;
    further reverse: ``-IS (1 + (3 N Vt / (e vd))^3)``, the smooth limit SPICE uses.
    """
    vte = model["n"] * THERMAL_VOLTAGE
    forward = vd >= -3 * vte
    safe_forward = jnp.where(forward, vd, 0.0)
    safe_reverse = jnp.where(forward, -1.0, vd)
    arg = (3 * vte / (safe_reverse * jnp.e)) ** 3
    current = jnp.where(
        forward, model["is"] * jnp.expm1(safe_forward / vte), -model["is"] * (1 + arg)
    )
    return current + GMIN * vd


def diode_charge(vd, model: dict):
    """Junction charge: transit-time ``TT * I`` plus depletion charge (``CJO, VJ, M``,
    linearised above ``FC * VJ``), as ngspice."""
    charge = model["tt"] * (diode_current(vd, model) - GMIN * vd)
    cjo = model["cjo"]
    if cjo == 0:
        return charge
    vj, m, fc = model["vj"], model["m"], model["fc"]
    below = vd < fc * vj
    arg = 1 - jnp.where(below, vd, 0.0) / vj
    depletion_low = vj * cjo * (1 - arg ** (1 - m)) / (1 - m)
    f1 = vj * (1 - (1 - fc) ** (1 - m)) / (1 - m)
    f2 = (1 - fc) ** (1 + m)
    f3 = 1 - fc * (1 + m)
    depletion_high = cjo * (
        f1 + (f3 * (vd - fc * vj) + (m / (2 * vj)) * (vd**2 - (fc * vj) ** 2)) / f2
    )
    return charge + jnp.where(below, depletion_low, depletion_high)
