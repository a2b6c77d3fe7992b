"""Dynamical-system modules (DESIGN section 7): ODE, steady state, index-1 DAE,
Brayton-Moser circuits, frequency responses and CasADi-defined modules."""

from .._module import AbstractSystemModule
from ._common import Constant, SystemSolution
from .ode import ODEModule
