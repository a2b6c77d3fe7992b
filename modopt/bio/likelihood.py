"""PEtab's noise models: the exact negative log-likelihood and chi2 of one data point.

For measurement ``m``, simulation ``h`` and noise ``sigma`` with transformation ``f``
(lin, log or log10) PEtab v1 defines (``petab.v1.calculate.calculate_single_llh``)

- normal: ``0.5 log(2 pi sigma^2 J^2) + 0.5 ((f(m) - f(h)) / sigma)^2``
- laplace: ``log(2 sigma J) + |f(m) - f(h)| / sigma``

where ``J = |f'(m)|^-1`` is 1, ``m`` or ``m ln 10``: the Jacobian that makes the density
one of ``m``, not of ``f(m)``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

TRANSFORMATIONS = ("lin", "log", "log10")
DISTRIBUTIONS = ("normal", "laplace")


def transform(value, transformation: str):
    """``f(value)`` for a PEtab observable transformation."""
    if transformation == "lin":
        return value
    if transformation == "log":
        return jnp.log(value)
    if transformation == "log10":
        return jnp.log10(value)
    raise ValueError(f"unknown observableTransformation {transformation!r}; "
                     f"known: {TRANSFORMATIONS}")


def _log_jacobian(measurement, transformation):
    if transformation == "lin":
        return jnp.zeros_like(measurement)
    if transformation == "log":
        return jnp.log(measurement)
    return jnp.log(measurement * math.log(10.0))


def negative_log_likelihood(measurement, simulation, sigma, transformation: str,
                            distribution: str):
    """Per-point ``-log p(m | h, sigma)``, elementwise."""
    z = (transform(measurement, transformation) - transform(simulation, transformation)) / sigma
    log_jacobian = _log_jacobian(measurement, transformation)
    if distribution == "normal":
        return 0.5 * jnp.log(2 * math.pi * sigma**2) + log_jacobian + 0.5 * z**2
    if distribution == "laplace":
        return jnp.log(2 * sigma) + log_jacobian + jnp.abs(z)
    raise ValueError(f"unknown noiseDistribution {distribution!r}; known: {DISTRIBUTIONS}")


def standardized_residual(measurement, simulation, sigma, transformation: str):
    """``(f(m) - f(h)) / sigma``: chi2 is the sum of its squares."""
    return (transform(measurement, transformation) - transform(simulation, transformation)) / sigma
