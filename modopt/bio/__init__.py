"""Biological models: SBML and PEtab import, multi-start fitting, gene-regulatory and
developmental systems.

- `read_sbml`: an SBML file as JAX functions (`SBMLModel.simulate`, ...);
  `SBMLModule`: chosen parameters of it as a modopt module.
- `load_petab`: a PEtab problem as a JAX objective (`PetabProblem.nllh`, ...).
- `ProfiledPetab`: the objective with scaling and noise parameters profiled out in
  closed form (hierarchical optimisation; `find_inner_parameters` lists them,
  `automatic_kinds` says which kinds `fit_petab` profiles out by default).
- `fit_petab`: many starts as one vmapped batch, leaving flat directions of the Fisher
  metric by `PlateauEscape` and abandoning starts that cannot catch up
  (`EarlyAbandon`); `write_fit_report`: table and plots.
- `toggle_switch`: the Gardner 2000 toggle switch as an ODE module.
"""

from .abandon import EarlyAbandon
from .errors import PetabError, SBMLError, SBMLUnsupportedError
from .fit import MultistartResult, fit_petab, latin_hypercube_starts
from .hierarchical import InnerParameter, ProfiledPetab, automatic_kinds, find_inner_parameters
from .petab import AbstractPetabObjective, PetabProblem, load_petab
from .plateaus import PlateauEscape
from .report import write_fit_report
from .sbml import SBMLModel, SBMLSimulation, read_sbml
from .sbml_module import SBMLModule
from .toggle import TOGGLE_NOMINAL, toggle_switch
