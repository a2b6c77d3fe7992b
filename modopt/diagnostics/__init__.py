"""The paper's theory as tools: the action and Hamiltonian of a path (`path_action`),
and contraction and stability (`contraction`)."""

from .action import PathAction, metric_norm2, path_action
from .contraction import Contraction, contraction, generalised_ntk
from .stability import replace_one_sample
