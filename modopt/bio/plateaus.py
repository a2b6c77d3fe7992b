"""Leaving the flat directions of the Fisher metric: a scan along its kernel.

A rate constant far above the scale of the data makes its reaction instantaneous: the
simulation, and so the nllh, no longer depends on it, and the Fisher information
``J^T J`` has a zero eigenvalue along it. Every local method (the Riemannian steps,
trust-region least squares, fides) stops there, because its model of the objective says
nothing about that direction. On Bruno_JExpBot2016, 29 of 100 Latin-hypercube starts end
on two such plateaus (a large ``k5``, nllh 874.2; large ``kc1`` and ``kc2``, 354.87),
although the same parameters a few decades lower give a far better fit.

Where a start's fit has converged (or `EarlyAbandon` gave it up: a plateau far above
the best stalls it), `PlateauEscape` looks along each such direction,
across the whole box, on a coarse grid of points (the nllh only: forward solves, no
derivatives), and fits again from the lowest point when it beats the end of the fit by
`min_gain`. A start still moving when its iterations run out is not scanned: it is not
on a plateau, and the far ends of the box are where the ODE solves cost the most.
"""

from __future__ import annotations

import equinox as eqx
import numpy as np


class PlateauEscape(eqx.Module):
    """Where a start's fit has converged, scan the near-kernel of its Fisher metric and
    fit again from the best point found (see the module's docstring).

    **Arguments:**

    - `points`: grid points per direction, spread evenly over the chord of the box
      through the end point.
    - `null_tolerance`: a direction is scanned when its eigenvalue of ``J^T J`` is below
      `null_tolerance` times the largest.
    - `min_gain`: restart only when a grid point's nllh is lower by at least this much
      (nllh units; 1 is half the "within 2" of the multi-start benchmarks).
    - `rounds`: how many times one start may be restarted.
    - `reach`: the half-length of the scanned line where the box is unbounded.
    - `minor`: components of a direction below `minor` times its largest are set to
      zero before the scan: a kernel vector has small components in other parameters,
      which along a long chord add changes that do cost, and one of them on its bound
      shortens the chord to nothing (on Elowitz_Nature2000 the kernel vector along
      ``init_Y_protein`` has 0.01 in ``init_GFP_mRNA``, which sits on its bound). The
      default 0 keeps every component: longer chords reach the box's costly corners
      (measured in docs/bio.md, under Elowitz).
    """

    points: int = 17
    null_tolerance: float = 1e-6
    min_gain: float = 1.0
    rounds: int = 2
    reach: float = 10.0
    minor: float = 0.0

    def __check_init__(self):
        if self.points < 2:
            raise ValueError(f"PlateauEscape: points must be at least 2, got {self.points}")
        if not 0 < self.null_tolerance < 1:
            raise ValueError("PlateauEscape: null_tolerance must be in (0, 1), got "
                             f"{self.null_tolerance}")
        if self.min_gain < 0 or self.rounds < 1 or self.reach <= 0:
            raise ValueError("PlateauEscape: min_gain >= 0, rounds >= 1 and reach > 0 are "
                             f"needed, got {self.min_gain}, {self.rounds}, {self.reach}")
        if not 0 <= self.minor < 1:
            raise ValueError(f"PlateauEscape: minor must be in [0, 1), got {self.minor}")

    def directions(self, fisher: np.ndarray) -> np.ndarray:
        """The unit vectors that span the near-kernel of `fisher` (``d x d``), as the
        columns of a ``d x k`` array (``k`` may be 0)."""
        values, vectors = np.linalg.eigh(np.asarray(fisher, float))
        largest = max(float(values[-1]), np.finfo(float).tiny)
        return vectors[:, values < self.null_tolerance * largest]

    def line(self, x: np.ndarray, direction: np.ndarray, lower: np.ndarray,
             upper: np.ndarray) -> np.ndarray:
        """`points` points ``x + t direction``, ``t`` evenly spaced over the chord of the
        box ``[lower, upper]`` through `x` (at most `reach` either side where the box is
        open), with the components of `direction` below `minor` times its largest set to
        zero. **Returns:** shape ``(points, d)``."""
        x, e = np.asarray(x, float), np.asarray(direction, float)
        moving = np.abs(e) > max(self.minor, 1e-12) * np.max(np.abs(e))
        e = np.where(moving, e, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            to_lower, to_upper = (lower - x) / e, (upper - x) / e
        backward = np.where(moving, np.minimum(to_lower, to_upper), -np.inf)
        forward = np.where(moving, np.maximum(to_lower, to_upper), np.inf)
        t = np.linspace(max(backward.max(), -self.reach), min(forward.min(), self.reach),
                        self.points)
        return np.clip(x + t[:, None] * e, lower, upper)
