"""Circuits as modopt modules (built on `modopt.systems`)."""

from .examples import TANH_NODE_NOMINAL, tanh_node_circuit
