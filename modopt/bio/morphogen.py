"""Developmental patterning: a morphogen made at one end of a line of cells, spreading by
diffusion and degraded everywhere (synthesis-diffusion-degradation), read out as a French
flag by two concentration thresholds.

Cell ``i`` of ``N`` holds the concentration ``c_i`` and obeys

    dc_i/dt = D (c_{i-1} - 2 c_i + c_{i+1}) - k c_i + s u [i == 0]

with zero-flux ends (``c_{-1} = c_0``, ``c_N = c_{N-1}``). Each cell is a small module
with its own local kinetics (`Cell`: synthesis in the source cell, degradation in every
cell); `CellLine` composes ``N`` of them with the diffusive coupling into one vector
field, integrated as one `modopt.systems.ODEModule` (or solved for its steady state as one
`modopt.systems.SteadyState`).

Scaling all three rates by the same factor, ``(D, k, s) -> (a D, a k, a s)``, leaves the
steady state unchanged (divide the steady-state equations by ``a``): steady-state data
determine only ``D / k`` (the decay length, ``lambda ~ sqrt(D / k)`` cells) and ``s / k``
(the amplitude). Time courses also see the time scale ``1 / k`` and determine all three.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..systems import ODEModule, SteadyState

MORPHOGEN_NOMINAL = {"D": 1.0, "k": 0.1, "s": 1.0}
"""Diffusion ``D`` (cell widths^2 / h), degradation ``k`` (1 / h) and synthesis ``s``
(concentration / h): decay length ``sqrt(D / k) = 3.16`` cells, time scale ``1 / k = 10`` h."""

FRENCH_FLAG_THRESHOLDS = (1.0, 0.3)
"""Concentrations above the first threshold read blue, between the two white, below the
second red; with `MORPHOGEN_NOMINAL` and 12 cells each colour gets four cells."""

FATES = ("blue", "white", "red")


class Cell(eqx.Module):
    """One cell's local kinetics: ``s u - k c`` in a source cell, ``-k c`` elsewhere.

    **Arguments:**

    - `source`: whether the cell makes the morphogen.
    """

    source: bool = eqx.field(static=True, default=False)

    def __call__(self, c, drive, rates):
        """The local rate of change of the cell's concentration `c`.

        **Arguments:**

        - `c`: the cell's concentration (a scalar).
        - `drive`: the condition's synthesis multiplier ``u`` (1 for the wild type).
        - `rates`: the linear-scale rates, a dict with ``"k"`` and ``"s"``.

        **Returns:** ``dc/dt`` from synthesis and degradation alone.
        """
        synthesis = rates["s"] * drive if self.source else 0.0
        return synthesis - rates["k"] * c


def zero_flux_laplacian(c):
    """``c_{i-1} - 2 c_i + c_{i+1}`` with reflecting ends (``c_{-1} = c_0``,
    ``c_N = c_{N-1}``): no morphogen leaves the line."""
    padded = jnp.concatenate([c[:1], c, c[-1:]])
    return padded[:-2] - 2 * c + padded[2:]


class CellLine(eqx.Module):
    """A line of cells coupled by diffusion: the vector field of the whole tissue.

    Called as ``(t, c, u, params) -> dc/dt``, the signature of
    `modopt.systems.ODEModule`'s vector field, with `params` the log-scale rates
    ``{"D", "k", "s"}`` and ``u = [synthesis multiplier]``.

    **Arguments:**

    - `cells`: the cells, in order along the line (at least two).
    """

    cells: tuple[Cell, ...] = eqx.field(static=True)

    def __check_init__(self):
        if len(self.cells) < 2:
            raise ValueError(f"CellLine needs at least two cells, got {len(self.cells)}.")

    def __call__(self, t, c, u, params):
        rates = {name: jnp.exp(value) for name, value in params.items()}
        local = jnp.stack([cell(c[i], u[0], rates) for i, cell in enumerate(self.cells)])
        return rates["D"] * zero_flux_laplacian(c) + local


def morphogen_cells(n_cells: int) -> CellLine:
    """``n_cells`` cells in a line, the first one the source.

    **Raises:** `ValueError` if `n_cells < 2`.
    """
    if int(n_cells) != n_cells or n_cells < 2:
        raise ValueError(f"morphogen line: n_cells must be an integer >= 2, got {n_cells}.")
    return CellLine(tuple(Cell(source=i == 0) for i in range(int(n_cells))))


def _log_params(params: dict | None, dtype) -> dict:
    params = dict(MORPHOGEN_NOMINAL if params is None else params)
    if set(params) != set(MORPHOGEN_NOMINAL):
        raise ValueError(
            f"the morphogen line needs exactly the parameters {sorted(MORPHOGEN_NOMINAL)}; "
            f"got {sorted(params)}."
        )
    if any(not value > 0 for value in params.values()):
        raise ValueError(f"the morphogen rates must be positive, got {params}.")
    return {name: jnp.log(jnp.asarray(value, dtype)) for name, value in params.items()}


def _observed(n_cells: int, observed) -> tuple[int, ...]:
    cells = tuple(range(n_cells)) if observed is None else tuple(int(i) for i in observed)
    if not cells or any(not 0 <= i < n_cells for i in cells):
        raise ValueError(
            f"observed cells must be a non-empty list of indices in [0, {n_cells}), "
            f"got {observed}."
        )
    return cells


class _Observe(eqx.Module):
    """The observable ``(t, c, u, params) -> c[cells]`` (hashable, so rebuilt modules
    share their compiled code)."""

    cells: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, t, c, u, params):
        return c[np.asarray(self.cells)]


class _ObserveSteady(eqx.Module):
    """The steady-state observable ``(c, u, params) -> c[cells]``."""

    cells: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, c, u, params):
        return c[np.asarray(self.cells)]


class _SteadyResidual(eqx.Module):
    """``(c, u, params) -> dc/dt`` of the line, the residual of its steady state."""

    line: CellLine

    def __call__(self, c, u, params):
        return self.line(0.0, c, u, params)


def morphogen_line(
    times, params: dict | None = None, *, n_cells: int = 12, observed=None, dtype=float,
    **ode_options,
) -> ODEModule:
    """The line of cells as an ODE module: concentrations at `times`, from ``c = 0``.

    The module's input is one condition ``[u]``, the synthesis multiplier (1 for the wild
    type); its output the observed cells' concentrations at `times`, shape
    ``(T, len(observed))``. The rates are trained in log scale (``params["D"]`` holds
    ``log D``).

    **Arguments:**

    - `times`: observation times (h), all ``> 0``.
    - `params`: ``{"D", "k", "s"}`` in linear scale (default `MORPHOGEN_NOMINAL`).
    - `n_cells`: the number of cells; cell 0 is the source.
    - `observed`: indices of the observed cells (default all).
    - `dtype`: the parameters' dtype.
    - `ode_options`: passed to `modopt.systems.ODEModule` (solver, rtol, atol, ...).

    **Returns:** a `modopt.systems.ODEModule`.

    **Raises:** `ValueError` for unknown or non-positive rates, fewer than two cells or
    observed indices outside the line.
    """
    return ODEModule(
        morphogen_cells(n_cells), _log_params(params, dtype), np.zeros(n_cells), times,
        observable=_Observe(_observed(n_cells, observed)), in_shape=(1,), **ode_options,
    )


def morphogen_steady_state(
    params: dict | None = None, *, n_cells: int = 12, observed=None, dtype=float, **options
) -> SteadyState:
    """The line of cells at steady state, as a `modopt.systems.SteadyState` module.

    Same input, parameters and observed cells as `morphogen_line`; the output has shape
    ``(len(observed),)``. The steady-state equations are linear, so Newton converges in
    one step and the settling fallback is off; derivatives come from the implicit
    function theorem.

    **Arguments:** as `morphogen_line`, with `options` passed to `SteadyState`.

    **Returns:** a `modopt.systems.SteadyState`.

    **Raises:** as `morphogen_line`.
    """
    options = {"fallback": False, **options}
    return SteadyState(
        _SteadyResidual(morphogen_cells(n_cells)), _log_params(params, dtype),
        np.zeros(n_cells), observable=_ObserveSteady(_observed(n_cells, observed)),
        in_shape=(1,), **options,
    )


def french_flag(concentration, thresholds=FRENCH_FLAG_THRESHOLDS):
    """Each cell's fate from its concentration: 0 (blue) above ``thresholds[0]``, 1 (white)
    above ``thresholds[1]``, 2 (red) otherwise; names in `FATES`.

    **Arguments:**

    - `concentration`: an array of concentrations, any shape.
    - `thresholds`: ``(high, low)`` with ``high > low``.

    **Returns:** an integer array of the shape of `concentration`.

    **Raises:** `ValueError` unless ``high > low``.
    """
    high, low = (float(x) for x in thresholds)
    if not high > low:
        raise ValueError(f"french_flag: thresholds must be (high, low) with high > low, "
                         f"got {tuple(thresholds)}.")
    c = jnp.asarray(concentration)
    return jnp.where(c > high, 0, jnp.where(c > low, 1, 2))
