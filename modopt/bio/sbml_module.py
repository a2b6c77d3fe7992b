"""An SBML model as a modopt module: chosen parameters (log scale) -> observed species."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp

from .._module import AbstractSystemModule
from ..systems._common import adjoint_for, as_times
from .sbml import SBMLModel


class SBMLModule(AbstractSystemModule):
    """Simulate an `SBMLModel` and return chosen quantities at fixed times.

    The trainable `params` hold the **natural logarithms** of the free model inputs
    (``{"KM": log 40.0, ...}``), which keeps rates positive and equalises their scales.
    The input `u` is ignored (give a dummy of shape ``in_shape``). The output has shape
    ``(len(times), len(outputs))``.

    **Arguments:**

    - `model`: an `SBMLModel`.
    - `params`: ``{id: log value}`` of the free inputs; all others keep `model.defaults`.
    - `times`: observation times.
    - `outputs`: ids to observe; for species the `quantity` of them.
    - `quantity`: ``"amount"``, ``"concentration"`` or ``"value"`` (as in mathematics).
    - `solver`, `rtol`, `atol`, `max_steps`: Diffrax's (default ``Kvaerno5()``).
    - `sensitivity`: see `modopt.AbstractSystemModule`.
    """

    model: SBMLModel = eqx.field(static=True)
    params: dict
    times: tuple[float, ...] = eqx.field(static=True, converter=as_times)
    outputs: tuple[str, ...] = eqx.field(static=True, converter=tuple)
    quantity: str = eqx.field(static=True, default="amount")
    solver: diffrax.AbstractSolver = diffrax.Kvaerno5()
    rtol: float = eqx.field(static=True, default=1e-8)
    atol: float = eqx.field(static=True, default=1e-10)
    max_steps: int = eqx.field(static=True, default=100_000)
    sensitivity: str = eqx.field(static=True, kw_only=True, default="auto")
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=(1,))
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        if self.quantity not in ("amount", "concentration", "value"):
            raise ValueError(f"SBMLModule: quantity must be 'amount', 'concentration' or "
                             f"'value', got {self.quantity!r}")
        unknown = [o for o in self.outputs if o not in self.model.symbols]
        if unknown:
            raise ValueError(f"SBMLModule: {unknown} are not symbols of model "
                             f"{self.model.model_id!r}")
        self.model.inputs({k: 1.0 for k in self.params})  # raises for unknown / ruled ids

    def __call__(self, u=None):
        values = {k: jnp.exp(v) for k, v in self.params.items()}
        sim = self.model.simulate(
            self.times, values, solver=self.solver, rtol=self.rtol, atol=self.atol,
            max_steps=self.max_steps, adjoint=adjoint_for(self.sensitivity))
        species = {"amount": sim.amounts, "concentration": sim.concentrations,
                   "value": sim.values}[self.quantity]
        return jnp.stack([species[o] if o in species else sim.values[o]
                          for o in self.outputs], axis=-1)
