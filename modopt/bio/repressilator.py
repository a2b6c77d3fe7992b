"""Example (a): recover the repressilator's parameters (BioModels BIOMD0000000012,
Elowitz & Leibler 2000) from noisy traces of its three proteins."""

from __future__ import annotations

from pathlib import Path

import diffrax
import jax.numpy as jnp
import numpy as np

from ..systems.recovery import RecoveryProblem
from .sbml import read_sbml
from .sbml_module import SBMLModule

REPRESSILATOR_SBML = Path(__file__).parent / "data" / "BIOMD0000000012_repressilator.xml"

FREE = ("n", "KM", "tau_mRNA", "tau_prot", "ps_a", "ps_0")
"""The parameters recovered. The translation efficiency ``eff`` stays fixed: with only
proteins observed, scaling transcription (``ps_a``, ``ps_0``) up and translation down by
one factor scales the unobserved mRNAs and leaves the proteins unchanged."""


def repressilator_problem(path=REPRESSILATOR_SBML, free=FREE, rtol=1e-8,
                          atol=1e-6) -> RecoveryProblem:
    """The recovery problem: outputs the protein amounts PX, PY, PZ (molecules).

    The oscillator is not stiff, so an explicit solver (Tsit5) integrates it several
    times faster than the SBML default Kvaerno5.
    """
    model = read_sbml(path)
    nominal = {name: float(model.defaults[name]) for name in free}

    def build(times, values):
        params = {k: jnp.log(jnp.asarray(v, float)) for k, v in values.items()}
        return SBMLModule(model, params, times, ("PX", "PY", "PZ"), solver=diffrax.Tsit5(),
                          rtol=rtol, atol=atol)

    return RecoveryProblem(build, nominal, np.zeros((1, 1)), output_names=("PX", "PY", "PZ"))
