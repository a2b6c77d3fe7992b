"""modopt: Riemannian optimization of modular systems."""

from . import diagnostics, losses, metrics
from ._blocks import block_labels
from ._module import AbstractModule, Group, Linear, Parallel, Pointwise, Sequential, mlp
from ._results import RESULTS
from .bounds import Box
from .flow import FlowSolution, flow
from .gradient import Direction, riemannian_direction, riemannian_gradient
from .jacobian import AbstractJacobian, AutoJacobian, Forward, Reverse
from .linalg import AbstractBlockSolver, AutoSolve, Primal, Woodbury
from .rosenbrock import Ros2
from .steps import AdaptiveMass, RiemannianSteps, StepState

__version__ = "0.1.0"
