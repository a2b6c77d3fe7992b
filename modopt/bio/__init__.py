"""Biological models: SBML and PEtab import, gene-regulatory and developmental systems.

- `read_sbml`: an SBML file as JAX functions (`SBMLModel.simulate`, ...).
- `load_petab`: a PEtab problem as a JAX objective (`PetabProblem.nllh`, ...).
- `toggle_switch`: the Gardner 2000 toggle switch as an ODE module.
"""

from .errors import PetabError, SBMLError, SBMLUnsupportedError
from .petab import PetabProblem, load_petab
from .sbml import SBMLModel, SBMLSimulation, read_sbml
from .toggle import TOGGLE_NOMINAL, toggle_switch
