"""A linearly implicit Diffrax solver for the Riemannian flow: `Ros2`.

The flow ``dw/ds = f(w) = -G(w)^-1 g(w)`` is stiff: near an optimum its linearisation is
``-G^-1 K^T K`` with rates from the mass ``D`` up to 1, and far from it much faster
directions appear. An explicit solver's step stays within its stability limit (pseudo-time
about 3 for Tsit5), and the flow needs a pseudo-time of about ``log(1/tolerance)``, at six
Jacobians per Tsit5 step. `Ros2` is L-stable, so its steps grow with the accuracy the
controller asks for, not with stability.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import diffrax
import jax

_GAMMA = 1.0 + 1.0 / math.sqrt(2.0)  # a Python float: keeps float32 pseudo-time float32


class LinearisedFlowTerm(diffrax.ODETerm):
    """The flow's vector field together with its linearisation, for `Ros2`.

    - `vector_field`: ``(s, w, args) -> -G(w)^-1 g(w)`` (NaN where not finite).
    - `linearise`: ``w -> (solve, product)`` of `modopt.gradient.linearise` at ``w``.
    """

    linearise: Callable


def _unwrapped(terms):
    # diffeqsolve wraps the term (for the direction of integration, here always forward).
    while not isinstance(terms, LinearisedFlowTerm):
        terms = terms.term
    return terms


def _axpy(a, x, y):
    return jax.tree.map(lambda xi, yi: (a * xi + yi).astype(yi.dtype), x, y)


class Ros2(diffrax.AbstractAdaptiveSolver):
    """Verwer's two-stage Rosenbrock-W method ROS2 (order 2, L-stable; Verwer, Spee, Blom and
    Hundsdorfer 1999, SIAM J. Sci. Comput. 20(4)) with the flow's Gauss-Newton Jacobian.

    With ``W = -G_0^-1 K_0^T K_0`` (``G_0 = K_0^T K_0 + D`` and ``g_0`` at the step's start)
    and ``c = 1 + gamma h``, ``gamma = 1 + 1/sqrt(2)``, a step of length ``h`` is::

        (K_0^T K_0 + D / c) k1 = -g_0 / c
        (K_0^T K_0 + D / c) k2 = G_0 (f(w_0 + h k1) - 2 k1) / c
        w_1 = w_0 + h (3 k1 + k2) / 2,   error estimate  h (k1 + k2) / 2

    the first being the steps' (`modopt.RiemannianSteps`) Levenberg-Marquardt system with
    the mass divided by ``c``. A W-method keeps its order 2 with any ``W``; this one is the
    flow's exact Jacobian where the residuals vanish. Each step evaluates two Jacobians
    (at ``w_0`` and at ``w_0 + h k1``) and solves three block systems by Woodbury. Use
    with `modopt.flow` (which builds the `LinearisedFlowTerm`) and an adaptive step-size
    controller.
    """

    term_structure: ClassVar = LinearisedFlowTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 2

    def error_order(self, terms):
        return 2

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        h = t1 - t0
        solve, product = _unwrapped(terms).linearise(y0)
        c = 1 + _GAMMA * h
        # With float64 pseudo-time and float32 parameters, keep the parameters' dtype.
        k1 = jax.tree.map(lambda u: (-u / c).astype(u.dtype), solve(1 / c, scale_box=True))
        f_mid = terms.vf(t1, _axpy(h, k1, y0), args)
        rhs = product(_axpy(-2.0, k1, f_mid))
        k2 = jax.tree.map(lambda u: (u / c).astype(u.dtype), solve(1 / c, rhs, scale_box=True))
        y1 = jax.tree.map(lambda y, a, b: (y + h * (1.5 * a + 0.5 * b)).astype(y.dtype),
                          y0, k1, k2)
        y_error = jax.tree.map(lambda a, b: (0.5 * h * (a + b)).astype(a.dtype), k1, k2)
        return y1, y_error, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
