"""Modified nodal analysis: a netlist as the equations ``d/dt q(x) + f(x, t) = 0``.

The unknowns ``x`` are the node voltages (ground excluded) followed by the branch
currents of the elements that define a voltage (V, L, E, H and ``V=`` B sources), each
positive from the element's first node through it to its second, as in ngspice. KCL rows
sum the currents leaving a node. The linear part is assembled from constant stamps
weighted by the element values, so it is differentiable in them:

    f(x, t) = (S0 + sum_k c_k(values) S_k) x + nonlinear(x, t) - b(t),
    q(x)    = (sum_k C_k(values) T_k) x + diode charges,

with ``c_k = 1/R`` for resistors and the gain for controlled sources, ``C_k = C`` for
capacitors and ``-L`` for inductors (so that ``L di/dt = v+ - v-``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .devices import diode_charge, diode_current
from .netlist import GROUND, Element, Netlist, NetlistError
from .waveforms import source_value

BRANCH_KINDS = "vleh"
PARAMETER_KINDS = "rclegfh"


@dataclass(frozen=True, eq=False)
class Topology:
    """The static structure of a circuit (hashed by identity, so jit caches on it)."""

    netlist: Netlist
    nodes: tuple[str, ...]
    internal: frozenset
    branches: tuple[str, ...]
    element_names: tuple[str, ...]  # elements whose value is a parameter, in stamp order
    conductance: np.ndarray  # (K, N, N): stamps weighted by c_k(values)
    capacitance: np.ndarray  # (K, N, N): stamps weighted by C_k(values)
    structural: np.ndarray  # (N, N): the fixed incidence entries
    fixed_conductance: np.ndarray  # (N, N): diode series resistances
    sources: tuple  # (element, vector): b(t) = sum value(t) * vector
    diodes: tuple  # (element, anode index, cathode index, model dict)
    b_sources: tuple  # (element, index vector, branch index or -1)
    ac_vector: np.ndarray  # complex (N,)
    capacitive: np.ndarray  # (n_nodes, n_capacitive) incidence of the charge elements

    @property
    def size(self) -> int:
        return len(self.nodes) + len(self.branches)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def index(self, node: str) -> int:
        return -1 if node == GROUND else self.nodes.index(node)

    def branch(self, name: str) -> int:
        return len(self.nodes) + self.branches.index(name)


def _incidence(topology_nodes, size, *nodes) -> np.ndarray:
    """``e_{n+} - e_{n-}`` (ground dropped)."""
    vector = np.zeros(size)
    for node, sign in zip(nodes, (1.0, -1.0)):
        if node != GROUND:
            vector[topology_nodes.index(node)] += sign
    return vector


def build_topology(netlist: Netlist) -> Topology:
    """Number the unknowns and build the stamps.

    **Raises:** `NetlistError` for an F or H source whose controlling voltage source
    does not exist, a loop of voltage-defining elements, or a node with no DC path to
    ground (a floating node).
    """
    elements = netlist.elements
    nodes = list(netlist.nodes)
    internal = set()
    for element in elements:
        if element.kind == "d" and dict(element.model)["rs"] > 0:
            node = element.name + "#internal"
            nodes.append(node)
            internal.add(node)
    branches = [e.name for e in elements if e.kind in BRANCH_KINDS or
                (e.kind == "b" and e.expression_kind == "v")]
    n, size = len(nodes), len(nodes) + len(branches)
    branch_index = {name: n + k for k, name in enumerate(branches)}

    def incidence(a, b):
        return _incidence(nodes, size, a, b)

    def row(name):
        e = np.zeros(size)
        e[branch_index[name]] = 1.0
        return e

    names, conductance, capacitance = [], [], []
    structural = np.zeros((size, size))
    fixed = np.zeros((size, size))
    sources, diodes, b_sources, charge_columns = [], [], [], []
    ac = np.zeros(size, complex)
    for e in elements:
        if e.kind in "fh" and e.control not in branch_index:
            raise NetlistError(
                f"line {e.line} ({e.name}): the controlling source {e.control!r} is not a "
                "voltage source of this circuit (inside a subcircuit it must be local)."
            )
        a = incidence(*e.nodes[:2])
        zero = np.zeros((size, size))
        if e.kind == "r":
            names.append(e.name)
            conductance.append(np.outer(a, a))
            capacitance.append(zero)
        elif e.kind == "c":
            names.append(e.name)
            conductance.append(zero)
            capacitance.append(np.outer(a, a))
            charge_columns.append(a[:n])
        elif e.kind in BRANCH_KINDS or e.kind == "b" and e.expression_kind == "v":
            k = row(e.name)
            structural += np.outer(a, k) + np.outer(k, a)
            if e.kind == "l":
                names.append(e.name)
                conductance.append(zero)
                capacitance.append(-np.outer(k, k))
            elif e.kind == "e":
                names.append(e.name)
                conductance.append(-np.outer(k, incidence(*e.nodes[2:])))
                capacitance.append(zero)
            elif e.kind == "h":
                names.append(e.name)
                conductance.append(-np.outer(k, row(e.control)))
                capacitance.append(zero)
            elif e.kind == "v":
                sources.append((e, k))
                ac[branch_index[e.name]] = e.ac[0] * np.exp(1j * np.deg2rad(e.ac[1]))
            else:
                b_sources.append((e, a, branch_index[e.name]))
        elif e.kind == "i":
            sources.append((e, -a))
            ac -= a * e.ac[0] * np.exp(1j * np.deg2rad(e.ac[1]))
        elif e.kind == "g":
            names.append(e.name)
            conductance.append(np.outer(a, incidence(*e.nodes[2:])))
            capacitance.append(zero)
        elif e.kind == "f":
            names.append(e.name)
            conductance.append(np.outer(a, row(e.control)))
            capacitance.append(zero)
        elif e.kind == "d":
            model = dict(e.model)
            anode = e.nodes[0]
            if model["rs"] > 0:
                anode = e.name + "#internal"
                outer = incidence(e.nodes[0], anode)
                fixed += np.outer(outer, outer) / model["rs"]
            junction = incidence(anode, e.nodes[1])
            diodes.append((e, junction, model))
            if model["cjo"] > 0 or model["tt"] > 0:
                charge_columns.append(junction[:n])
        else:  # a current B source
            b_sources.append((e, a, -1))
    topology = Topology(
        netlist=netlist, nodes=tuple(nodes), internal=frozenset(internal),
        branches=tuple(branches), element_names=tuple(names),
        conductance=np.array(conductance).reshape(-1, size, size),
        capacitance=np.array(capacitance).reshape(-1, size, size),
        structural=structural, fixed_conductance=fixed, sources=tuple(sources),
        diodes=tuple(diodes), b_sources=tuple(b_sources), ac_vector=ac,
        capacitive=np.array(charge_columns).reshape(-1, n).T,
    )
    _check_voltage_loops(netlist)
    _check_dc_paths(netlist, topology)
    return topology


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, a):
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a, b) -> bool:
        ra, rb = self.find(a), self.find(b)
        self.parent[ra] = rb
        return ra != rb


def _voltage_defining(e: Element) -> bool:
    return e.kind in "veh" or (e.kind == "b" and e.expression_kind == "v")


def _check_voltage_loops(netlist: Netlist) -> None:
    sets = _UnionFind()
    for e in netlist.elements:
        if _voltage_defining(e) and not sets.union(*e.nodes[:2]):
            loop = [f.name for f in netlist.elements if _voltage_defining(f)
                    and sets.find(f.nodes[0]) == sets.find(e.nodes[0])]
            raise NetlistError(
                f"line {e.line} ({e.name}): closes a loop of voltage sources "
                f"({', '.join(loop)}); their voltages would be over-determined and the "
                "loop current undetermined. Add a series resistance."
            )


def _check_dc_paths(netlist: Netlist, topology: Topology) -> None:
    sets = _UnionFind()
    sets.find(GROUND)
    for e in netlist.elements:
        if e.kind in "rlvdeh" or (e.kind == "b" and e.expression_kind == "v"):
            sets.union(*e.nodes[:2])
    floating = [node for node in netlist.nodes if sets.find(node) != sets.find(GROUND)]
    if floating:
        touching = sorted({e.name for e in netlist.elements
                           if any(node in e.nodes[:2] for node in floating)})
        raise NetlistError(
            f"floating node(s) {', '.join(floating)}: no DC path to ground (only "
            f"capacitors or current sources connect them: {', '.join(touching)}). The DC "
            "operating point is undetermined; add a large resistor to ground."
        )


def element_values(topology: Topology) -> dict:
    """The netlist's value of every parameter element."""
    return {name: topology.netlist.element(name).value for name in topology.element_names}


def _coefficients(topology: Topology, values: dict, dtype):
    kinds = [name_kind(topology, name) for name in topology.element_names]
    conductance = jnp.stack(
        [1 / values[name] if kind == "r" else (values[name] if kind in "egfh" else 0.0)
         for name, kind in zip(topology.element_names, kinds)]
    ).astype(dtype) if kinds else jnp.zeros((0,), dtype)
    capacitance = jnp.stack(
        [values[name] if kind in "cl" else 0.0
         for name, kind in zip(topology.element_names, kinds)]
    ).astype(dtype) if kinds else jnp.zeros((0,), dtype)
    return conductance, capacitance


def name_kind(topology: Topology, name: str) -> str:
    return topology.netlist.element(name).kind


def conductance_matrix(topology: Topology, values: dict, dtype):
    coefficients, _ = _coefficients(topology, values, dtype)
    return (jnp.asarray(topology.structural + topology.fixed_conductance, dtype)
            + jnp.tensordot(coefficients, jnp.asarray(topology.conductance, dtype), 1))


def linear_charge_matrix(topology: Topology, values: dict, dtype):
    _, coefficients = _coefficients(topology, values, dtype)
    return jnp.tensordot(coefficients, jnp.asarray(topology.capacitance, dtype), 1)


def source_vector(topology: Topology, t=None, *, dc: bool, dtype, override=None):
    """``b(t)``; `override` ``(name, value)`` replaces one source's value (DC sweeps)."""
    b = jnp.zeros(topology.size, dtype)
    for element, vector in topology.sources:
        if override is not None and element.name == override[0]:
            value = override[1]
        else:
            value = source_value(element, t, dc=dc)
        b = b + jnp.asarray(value, dtype) * jnp.asarray(vector, dtype)
    return b


def residual(topology: Topology, values: dict, x, b, t, *, shunt=0.0):
    """``f(x, t)`` with the source vector `b` given; `shunt` adds a conductance from
    every node to ground (gmin stepping)."""
    dtype = x.dtype
    f = conductance_matrix(topology, values, dtype) @ x - b
    n = topology.num_nodes
    f = f.at[:n].add(shunt * x[:n])
    for _element, junction, model in topology.diodes:
        vd = jnp.dot(jnp.asarray(junction, dtype), x)
        f = f + diode_current(vd, model) * jnp.asarray(junction, dtype)
    if topology.b_sources:
        voltage = _voltages(topology, x)
        time = jnp.asarray(0.0 if t is None else t, dtype)
        for element, incidence, branch in topology.b_sources:
            env = dict(element.bindings) | {"time": time}
            mapped = dict(element.expression_nodes)
            value = element.expression(env, lambda node, m=mapped: voltage(m[node]))
            if branch < 0:
                f = f + value * jnp.asarray(incidence, dtype)
            else:
                f = f.at[branch].add(-value)
    return f


def charge(topology: Topology, values: dict, x):
    """``q(x)``: capacitor and inductor terms, and diode junction charges."""
    dtype = x.dtype
    q = linear_charge_matrix(topology, values, dtype) @ x
    for _element, junction, model in topology.diodes:
        if model["cjo"] > 0 or model["tt"] > 0:
            vd = jnp.dot(jnp.asarray(junction, dtype), x)
            q = q + diode_charge(vd, model) * jnp.asarray(junction, dtype)
    return q


def _voltages(topology: Topology, x):
    def voltage(node):
        return 0.0 if node == GROUND else x[topology.index(node)]

    return voltage


def named(topology: Topology, x) -> dict:
    """``{"v_<node>": ..., "i_<element>": ...}`` from the unknowns (last axis)."""
    out = {}
    for k, node in enumerate(topology.nodes):
        if node not in topology.internal:
            out[f"v_{node}"] = x[..., k]
    for k, name in enumerate(topology.branches):
        out[f"i_{name}"] = x[..., topology.num_nodes + k]
    return out
