"""Circuits as modopt modules: SPICE netlists in, differentiable analyses out (built on
`modopt.systems`)."""

from .circuit import Circuit, OperatingPoint
from .examples import TANH_NODE_NOMINAL, tanh_node_circuit
from .expressions import ExpressionError
from .netlist import Netlist, NetlistError, parse_netlist

__all__ = ["TANH_NODE_NOMINAL", "Circuit", "ExpressionError", "Netlist", "NetlistError",
           "OperatingPoint", "parse_netlist", "tanh_node_circuit"]
