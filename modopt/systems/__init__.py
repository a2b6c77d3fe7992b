"""Dynamical-system modules (DESIGN section 7): ODE, steady state, index-1 DAE,
Brayton-Moser circuits, frequency responses and CasADi-defined modules."""

from .._module import AbstractSystemModule
from ._common import Constant, SystemSolution
from .brayton_moser import (
    BraytonMoser,
    EnergyMetric,
    PowerBalance,
    StabilityReport,
    energy_metric,
    power_balance,
    stability_test,
)
from .casadi import CasadiCallable, CasadiModule, casadi_callable
from .dae import IndexOneDAE
from .frequency import (
    FrequencyResponse,
    LinearSystem,
    frequency_response,
    linearize,
    linearize_module,
    operating_point,
)
from .ode import ODEModule
from .steady import SteadyState
