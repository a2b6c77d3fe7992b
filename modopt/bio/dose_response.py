"""The toggle switch's IPTG dose-response: its state after a long time for a range of
IPTG doses, from both of its stable states.

IPTG inactivates repressor ``u`` (``u -> u / (1 + IPTG/K)^eta``), which lets ``v`` rise.
Without IPTG the switch is bistable: started with ``u`` high it stays there, started with
``v`` high it stays there. Above a threshold dose only the ``v``-high state survives, so
the dose-response depends on where the switch started (hysteresis). Measuring it from both
starts is what makes ``a1`` and ``beta`` identifiable: from the ``v``-high start ``u``
stays near ``a1 / (1 + v^beta)``, where ``a1`` and ``beta`` trade off.
"""

from __future__ import annotations

import numpy as np

from ..systems import ODEModule
from ..systems.recovery import RecoveryProblem
from .toggle import TOGGLE_NOMINAL, toggle_switch

TOGGLE_STARTS = {"v_high": (0.1, 10.0), "u_high": (10.0, 0.1)}
"""The two initial states ``(u0, v0)``: near the ``v``-high and the ``u``-high state."""


def iptg_doses(low: float = 1e-6, high: float = 1e-3, num: int = 24, zero: bool = True):
    """``num`` log-spaced IPTG doses (M) from `low` to `high`, after a zero dose if `zero`.

    **Raises:** `ValueError` unless ``0 < low < high`` and ``num >= 2``.
    """
    if not 0 < low < high or int(num) < 2:
        raise ValueError(
            f"iptg_doses needs 0 < low < high and num >= 2, got low={low}, high={high}, "
            f"num={num}."
        )
    doses = np.logspace(np.log10(low), np.log10(high), int(num))
    return np.concatenate([[0.0], doses]) if zero else doses


def dose_conditions(doses, starts=tuple(TOGGLE_STARTS.values())) -> np.ndarray:
    """The conditions ``[IPTG, u0, v0]`` of a dose-response, start-major: all doses from
    the first start, then all from the second, ...; shape ``(len(starts) * len(doses), 3)``.

    **Raises:** `ValueError` for negative doses or starts that are not ``(u0, v0)`` pairs.
    """
    doses = np.asarray(doses, dtype=float).reshape(-1)
    starts = np.asarray(list(starts), dtype=float)
    if np.any(doses < 0) or doses.size == 0:
        raise ValueError(f"IPTG doses must be a non-empty list of values >= 0, got {doses}.")
    if starts.ndim != 2 or starts.shape[1] != 2:
        raise ValueError(f"starts must be (u0, v0) pairs, got shape {starts.shape}.")
    return np.array([[dose, u0, v0] for u0, v0 in starts for dose in doses])


def toggle_dose_response(
    params: dict | None = None, *, time: float = 50.0, rtol: float = 1e-8, atol: float = 1e-8,
    **ode_options,
) -> ODEModule:
    """The toggle switch observed once, at `time`: one condition ``[IPTG, u0, v0]`` in,
    ``(u, v)`` at `time` out (shape ``(1, 2)``).

    **Arguments:**

    - `params`: the rates in linear scale (default `TOGGLE_NOMINAL`).
    - `time`: when the state is read, in units of the repressors' lifetime; at 50 every
      dose has settled except those within a few percent of the switching threshold.
    - `rtol`, `atol`, `ode_options`: passed to `toggle_switch`.

    **Returns:** a `modopt.systems.ODEModule` (parameters in log scale).

    **Raises:** `ValueError` for a non-positive `time`, or as `toggle_switch`.
    """
    if not time > 0:
        raise ValueError(f"toggle_dose_response: time must be positive, got {time}.")
    return toggle_switch((float(time),), params, rtol=rtol, atol=atol, **ode_options)


def dose_response_problem(
    doses=None, starts=tuple(TOGGLE_STARTS.values()), *, rtol: float = 1e-8,
    atol: float = 1e-8, **ode_options,
) -> RecoveryProblem:
    """The dose-response as a `modopt.systems.recovery.RecoveryProblem`: with
    ``times=[50.0]`` its modules are `toggle_dose_response`'s, so
    ``recover(problem, [50.0])`` fits a dose-response read at ``t = 50``.

    **Arguments:**

    - `doses`: IPTG doses (default `iptg_doses()`).
    - `starts`: initial states ``(u0, v0)``.
    - `rtol`, `atol`, `ode_options`: passed to `toggle_switch`.

    **Returns:** a `RecoveryProblem` with the conditions of `dose_conditions`.
    """
    doses = iptg_doses() if doses is None else doses

    def build(times, params):
        return toggle_switch(times, params, rtol=rtol, atol=atol, **ode_options)

    return RecoveryProblem(
        build, dict(TOGGLE_NOMINAL), dose_conditions(doses, starts), output_names=("u", "v")
    )
